/*
 * Host build of the firmware (fw-host): the HAL over a pseudo-terminal or a TCP socket, and
 * main(). POSIX; the firmware sources themselves stay platform-free.
 *
 *   fw-host --pty [--baud B] [--reset-after N]          first stdout line: the pty path
 *   fw-host --tcp HOST:PORT [--baud B] [--reset-after N] first stdout line: socket://HOST:PORT
 *
 * With --baud each line direction carries at most B/10 bytes per second (UART 8N1): received
 * bytes reach the firmware only after their line time, and answers leave no faster than the
 * line drains them, as a UART with receive and transmit buffers would. --reset-after N reboots
 * the device after every N-th STEP frame it applies (its answer still goes out first):
 * parameters, state, answer cache and sync are lost, the boot counter goes up.
 */
#define _DEFAULT_SOURCE
#define _XOPEN_SOURCE 700

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "fw_device.h"
#include "hal.h"

#define RXQ 65536   /* received bytes not yet delivered (power of two) */
#define RXCHUNKS 1024
#define RXCHUNK 256
#define TXQ 65536   /* bytes queued for transmission (power of two) */
#define TX_BATCH 128

static volatile sig_atomic_t stop;
static int chan = -1;     /* the pty master or the connected client socket */
static int listener = -1; /* TCP only */
static int slave = -1;    /* pty only: held open so the master never sees a hang-up */
static double byte_time;  /* seconds per byte on the line; 0: unthrottled */

static uint8_t rxq[RXQ];
static size_t rx_head, rx_count;
static struct { size_t len; double release; } rxc[RXCHUNKS];
static size_t rxc_head, rxc_count;
static double rx_free, rx_idle;

static uint8_t txq[TXQ];
static size_t tx_head, tx_count;
static double tx_clock;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

uint32_t hal_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint32_t)((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec);
}

uint32_t hal_tick_hz(void) {
    return 1000000000u;
}

static void drop_client(void) {
    if (listener >= 0 && chan >= 0) {
        close(chan);
        chan = -1;
        rx_head = rx_count = rxc_head = rxc_count = 0;
        tx_head = tx_count = 0;
    }
}

/* Move bytes from the channel into the receive queue, stamped with their line time. */
static void pump_rx(void) {
    double t = now_s();
    while (chan >= 0 && rx_count + RXCHUNK <= RXQ && rxc_count < RXCHUNKS) {
        uint8_t buf[RXCHUNK];
        ssize_t n = read(chan, buf, sizeof buf);
        size_t i, start;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == EIO)) {
            rx_idle = t; /* empty now: later bytes cannot have started arriving before */
            return;
        }
        if (n <= 0) {
            drop_client(); /* EOF or error: the client went away */
            return;
        }
        start = (rx_head + rx_count) % RXQ;
        for (i = 0; i < (size_t)n; i++) {
            rxq[(start + i) % RXQ] = buf[i];
        }
        rx_count += (size_t)n;
        if (byte_time > 0) {
            rx_free = (rx_free > rx_idle ? rx_free : rx_idle) + (double)n * byte_time;
        } else {
            rx_free = t;
        }
        rxc[(rxc_head + rxc_count) % RXCHUNKS].len = (size_t)n;
        rxc[(rxc_head + rxc_count) % RXCHUNKS].release = rx_free;
        rxc_count++;
    }
}

/* Write the queued bytes whose line time has come. */
static void pump_tx(int force) {
    double t = now_s();
    while (chan >= 0 && tx_count) {
        size_t due = tx_count, contiguous;
        ssize_t w;
        if (byte_time > 0 && !force) {
            double d = (t - tx_clock) / byte_time;
            due = d <= 0 ? 0 : (d >= (double)tx_count ? tx_count : (size_t)d);
            if (due < tx_count && due < TX_BATCH) {
                return;
            }
        }
        contiguous = TXQ - tx_head < due ? TXQ - tx_head : due;
        w = write(chan, txq + tx_head, contiguous);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                return;
            }
            drop_client();
            return;
        }
        tx_head = (tx_head + (size_t)w) % TXQ;
        tx_count -= (size_t)w;
        tx_clock += (double)w * byte_time;
    }
}

/* Sleep until the channel is readable or writable, or the next queued byte is due. */
static void wait_io(double max_wait) {
    struct pollfd pf;
    double t = now_s(), wake = t + max_wait;
    if (rxc_count && rxc[rxc_head].release < wake) {
        wake = rxc[rxc_head].release;
    }
    if (tx_count && byte_time > 0) {
        size_t batch = tx_count < TX_BATCH ? tx_count : TX_BATCH;
        double due = tx_clock + (double)batch * byte_time;
        if (due < wake) {
            wake = due;
        }
    }
    pf.fd = chan >= 0 ? chan : listener;
    pf.events = POLLIN;
    if (chan >= 0 && tx_count && byte_time == 0) {
        pf.events |= POLLOUT;
    }
    if (chan >= 0 && rx_count + RXCHUNK > RXQ) {
        pf.events &= (short)~POLLIN; /* full: let the sender wait (flow control) */
    }
    poll(&pf, 1, wake > t ? (int)((wake - t) * 1000.0) + (wake - t > 0.0005) : 0);
}

size_t hal_uart_read(uint8_t *buf, size_t max) {
    double t;
    size_t got = 0;
    pump_rx();
    t = now_s();
    while (got < max && rxc_count && rxc[rxc_head].release <= t) {
        size_t take = rxc[rxc_head].len < max - got ? rxc[rxc_head].len : max - got;
        size_t i;
        for (i = 0; i < take; i++) {
            buf[got + i] = rxq[(rx_head + i) % RXQ];
        }
        rx_head = (rx_head + take) % RXQ;
        rx_count -= take;
        got += take;
        rxc[rxc_head].len -= take;
        if (rxc[rxc_head].len == 0) {
            rxc_head = (rxc_head + 1) % RXCHUNKS;
            rxc_count--;
        }
    }
    return got;
}

void hal_uart_write(const uint8_t *buf, size_t len) {
    size_t i;
    if (chan < 0) {
        return; /* no client: the bytes go nowhere, as on an unplugged line */
    }
    if (tx_count == 0 && tx_clock < now_s()) {
        tx_clock = now_s();
    }
    for (i = 0; i < len; i++) {
        while (tx_count == TXQ && chan >= 0) {
            pump_tx(0);
            if (tx_count == TXQ) {
                wait_io(0.01);
            }
        }
        if (chan < 0) {
            return;
        }
        txq[(tx_head + tx_count) % TXQ] = buf[i];
        tx_count++;
    }
    pump_tx(0);
}

static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

static int open_pty(char *path, size_t size) {
    struct termios tio;
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    const char *name;
    if (master < 0 || grantpt(master) != 0 || unlockpt(master) != 0 ||
        (name = ptsname(master)) == NULL) {
        perror("fw-host: pty");
        return -1;
    }
    snprintf(path, size, "%s", name);
    slave = open(path, O_RDWR | O_NOCTTY);
    if (slave < 0 || tcgetattr(slave, &tio) != 0) {
        perror("fw-host: pty slave");
        return -1;
    }
    cfmakeraw(&tio); /* no echo, no line discipline before the host configures the port */
    tcsetattr(slave, TCSANOW, &tio);
    fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK);
    return master;
}

static int open_tcp(const char *spec, char *where, size_t size) {
    char host[64];
    const char *colon = strrchr(spec, ':');
    struct sockaddr_in a;
    socklen_t alen = sizeof a;
    int one = 1, fd;
    if (!colon || (size_t)(colon - spec) >= sizeof host) {
        fprintf(stderr, "fw-host: --tcp %s: expected HOST:PORT\n", spec);
        return -1;
    }
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = 0;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        fprintf(stderr, "fw-host: --tcp %s: HOST must be an IPv4 address\n", spec);
        return -1;
    }
    fd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 1) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &alen) != 0) {
        perror("fw-host: tcp");
        return -1;
    }
    snprintf(where, size, "socket://%s:%u", host, (unsigned)ntohs(a.sin_port));
    return fd;
}

static void accept_client(void) {
    int one = 1;
    int fd = accept(listener, NULL, NULL);
    if (fd < 0) {
        return;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    chan = fd;
    rx_idle = rx_free = tx_clock = now_s();
}

static int usage(void) {
    fprintf(stderr, "usage: fw-host (--pty | --tcp HOST:PORT) [--baud B] [--reset-after N]\n");
    return 2;
}

int main(int argc, char **argv) {
    char where[128];
    const char *tcp = NULL;
    int pty = 0, i;
    unsigned long reset_after = 0, reboots = 0;
    double baud = 0;
    uint32_t boot = 1;
    struct sigaction sa;
    const struct fw_stats *st;
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--pty")) {
            pty = 1;
        } else if (!strcmp(argv[i], "--tcp") && i + 1 < argc) {
            tcp = argv[++i];
        } else if (!strcmp(argv[i], "--baud") && i + 1 < argc) {
            baud = atof(argv[++i]);
            if (baud <= 0) {
                return usage();
            }
        } else if (!strcmp(argv[i], "--reset-after") && i + 1 < argc) {
            reset_after = strtoul(argv[++i], NULL, 10);
        } else {
            return usage();
        }
    }
    if (pty == (tcp != NULL)) {
        return usage();
    }
    byte_time = baud > 0 ? 10.0 / baud : 0.0;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (pty) {
        chan = open_pty(where, sizeof where);
        if (chan < 0) {
            return 1;
        }
    } else {
        listener = open_tcp(tcp, where, sizeof where);
        if (listener < 0) {
            return 1;
        }
    }
    rx_idle = rx_free = tx_clock = now_s();
    printf("%s\n", where);
    fflush(stdout);
    if (baud > 0) {
        fprintf(stderr, "fw-host: serving on %s, baud %.0f", where, baud);
    } else {
        fprintf(stderr, "fw-host: serving on %s, baud unlimited", where);
    }
    fprintf(stderr, ", reboot after every %lu STEP frames (0: never)\n", reset_after);
    fw_device_boot(boot, (uint32_t)reset_after);
    while (!stop) {
        if (chan < 0) {
            wait_io(0.1);
            if (!stop) {
                accept_client();
            }
            continue;
        }
        if (fw_device_poll()) {
            while (tx_count && chan >= 0 && !stop) { /* the last answer leaves before reset */
                pump_tx(0);
                if (tx_count) {
                    wait_io(0.01);
                }
            }
            rx_head = rx_count = rxc_head = rxc_count = 0; /* lost while rebooting */
            fw_device_boot(++boot, (uint32_t)reset_after);
            reboots++;
            continue;
        }
        pump_tx(0);
        wait_io(0.05);
    }
    st = fw_device_stats();
    fprintf(stderr,
            "fw-host: stopped; %lu steps applied, %lu duplicates answered from cache, "
            "%lu corrupt frames, %lu reboots\n",
            (unsigned long)st->steps_applied, (unsigned long)st->duplicates,
            (unsigned long)st->corrupt_in, reboots);
    return 0;
}
