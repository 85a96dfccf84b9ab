/*
 * ring_stress - many threads producing random writes into one liftshift ring.
 *
 * Every call follows a real IO filter's sequence: ls_ring_admit(), then the
 * write to a reference image file (standing in for the vdisk), then
 * ls_ring_publish_*().  With --image - there is no reference image and the
 * image writes are skipped, so a benchmark measures only the ring.
 * Thread i owns partition i of the disk (disk_size / threads, 4 KiB aligned),
 * so per thread the image writes and the ring records happen in the same
 * order, and replaying the ring (plus resyncing overflowed chunks from the
 * image) onto a blank disk must reproduce the image exactly.  ZERO and TRIM
 * records zero their range in the image (TRIM punches a hole, which reads
 * back as zeros, or writes zeros where punching is not supported).
 *
 * --rate R paces the calls at R per second in total (R / threads per thread) on
 * an absolute schedule: a thread that falls behind (a full ring made it wait)
 * issues its overdue calls at once rather than dropping them, as a guest's
 * queued I/O would.
 *
 * At the end the ring is closed and one JSON line goes to stdout:
 *   {"records": calls published, "overflows": calls that overflowed,
 *    "final_seq": CLOSE sequence, "seconds": s, "records_per_s": r,
 *    "bytes": WRITE payload bytes, ...}
 * "records" counts write / zero / trim calls that returned 0 or
 * LS_OVERFLOWED; each is one ring record unless it was longer than the
 * ring's max_record (then it was split) or it overflowed.
 */
#define _GNU_SOURCE
#include "liftshift_ring.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SECTOR 512ULL

struct options {
    const char *ring;
    const char *image;
    unsigned threads;
    uint64_t records;     /* total calls, shared out among the threads */
    uint64_t min_size;
    uint64_t max_size;
    uint64_t fixed_size;  /* 0: random sizes in [min_size, max_size] */
    uint64_t seed;
    unsigned zero_pct;    /* percent of calls that are ZERO or TRIM */
    uint64_t rate;        /* calls per second in total; 0: as fast as possible */
    bool report_json;
};

struct worker {
    pthread_t thread;
    const struct options *opt;
    ls_ring *ring;
    int image_fd;
    uint64_t part_start;
    uint64_t part_len;
    uint64_t calls;
    uint64_t seed;
    uint64_t start_ns;    /* --rate: when the schedule starts (CLOCK_MONOTONIC) */
    /* results */
    uint64_t published;
    uint64_t overflows;
    uint64_t payload_bytes;
    uint64_t zeroes;
    uint64_t trims;
    int error;            /* first failure: ring return code or -errno */
    const char *failed_at;
};

/* ------------------------------------------------------------- PRNG */

/* splitmix64 expands the seed; xoshiro256** makes payload bytes fast enough
 * that the ring, not the generator, is what the benchmark measures. */
static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

struct rng {
    uint64_t s[4];
};

static void rng_seed(struct rng *g, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        g->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static inline uint64_t rng_next(struct rng *g)
{
    uint64_t *s = g->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform in [0, n) for n > 0 (the modulo bias is irrelevant here). */
static inline uint64_t rng_below(struct rng *g, uint64_t n)
{
    return rng_next(g) % n;
}

static void rng_fill(struct rng *g, uint8_t *buf, uint64_t len)
{
    uint64_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t v = rng_next(g);
        memcpy(buf + i, &v, 8);
    }
    if (i < len) {
        uint64_t v = rng_next(g);
        memcpy(buf + i, &v, len - i);
    }
}

/* ------------------------------------------------------------- image */

static int pwrite_full(int fd, const void *buf, uint64_t len, uint64_t offset)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = pwrite(fd, p, len, (off_t)offset);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        p += n;
        len -= (uint64_t)n;
        offset += (uint64_t)n;
    }
    return 0;
}

/* TRIM replays as "reads back as zeros": punch a hole, or write zeros where
 * the file system cannot punch. */
static int image_trim(int fd, const uint8_t *zeros, uint64_t len, uint64_t offset)
{
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)len) == 0)
        return 0;
    if (errno != EOPNOTSUPP && errno != ENOSYS)
        return -errno;
    return pwrite_full(fd, zeros, len, offset);
}

/* ------------------------------------------------------------- pacing */

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t nanos_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* Sleep until CLOCK_MONOTONIC reaches `deadline` ns (absolute, so EINTR
 * cannot stretch it). */
static void pace_until(uint64_t deadline)
{
    struct timespec ts = {
        .tv_sec = (time_t)(deadline / 1000000000ULL),
        .tv_nsec = (long)(deadline % 1000000000ULL),
    };
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

/* ------------------------------------------------------------- worker */

static void *run_worker(void *arg)
{
    struct worker *w = arg;
    const struct options *o = w->opt;
    uint64_t max = o->fixed_size ? o->fixed_size : o->max_size;
    if (max > w->part_len)
        max = w->part_len;
    uint8_t *buf = malloc(max);
    uint8_t *zeros = calloc(1, max);
    if (!buf || !zeros) {
        w->error = -ENOMEM;
        w->failed_at = "allocating buffers";
        goto out;
    }
    struct rng g;
    rng_seed(&g, w->seed);
    /* --rate: call i of this thread is due at start + i * period. */
    double period_ns = o->rate ? 1e9 * (double)o->threads / (double)o->rate : 0.0;

    for (uint64_t i = 0; i < w->calls; i++) {
        if (period_ns > 0.0) {
            uint64_t due = w->start_ns + (uint64_t)((double)i * period_ns);
            if (nanos_now() < due)
                pace_until(due);
        }
        uint64_t size;
        if (o->fixed_size) {
            size = max;
        } else {
            uint64_t lo = o->min_size < max ? o->min_size : max;
            size = lo + SECTOR * rng_below(&g, (max - lo) / SECTOR + 1);
        }
        uint64_t offset = w->part_start + SECTOR * rng_below(&g, (w->part_len - size) / SECTOR + 1);
        unsigned kind = o->zero_pct && rng_below(&g, 100) < o->zero_pct
                            ? (unsigned)(1 + rng_below(&g, 2))  /* 1 ZERO, 2 TRIM */
                            : 0;
        if (kind == 0)
            rng_fill(&g, buf, size);
        int rc = ls_ring_admit(w->ring, offset, size);
        if (rc != LS_OK) {
            w->failed_at = "admitting a write";
            w->error = rc;
            break;
        }
        bool image = w->image_fd >= 0;
        if (kind == 0) {
            if (image && (rc = pwrite_full(w->image_fd, buf, size, offset)) < 0) {
                w->failed_at = "writing the image";
                w->error = rc;
                break;
            }
            rc = ls_ring_publish_write(w->ring, offset, buf, size);
            w->payload_bytes += size;
        } else if (kind == 1) {
            if (image && (rc = pwrite_full(w->image_fd, zeros, size, offset)) < 0) {
                w->failed_at = "zeroing the image";
                w->error = rc;
                break;
            }
            rc = ls_ring_publish_zeroes(w->ring, offset, size);
            w->zeroes++;
        } else {
            if (image && (rc = image_trim(w->image_fd, zeros, size, offset)) < 0) {
                w->failed_at = "trimming the image";
                w->error = rc;
                break;
            }
            rc = ls_ring_publish_trim(w->ring, offset, size);
            w->trims++;
        }
        if (rc == LS_OVERFLOWED) {
            w->overflows++;
        } else if (rc != LS_OK) {
            w->failed_at = "publishing to the ring";
            w->error = rc;
            break;
        }
        w->published++;
    }
out:
    free(buf);
    free(zeros);
    return NULL;
}

/* ------------------------------------------------------------- main */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ring_stress --ring PATH --image PATH|- --threads N --records N\n"
            "                   [--min-size B] [--max-size B] [--fixed-size B] [--seed S]\n"
            "                   [--zero-pct P] [--rate OPS] [--report-json]\n"
            "\n"
            "Random writes from N threads, each in its own partition of the disk: each\n"
            "call is admitted, written to the reference image (at least as large as\n"
            "the disk), then published to the ring; finally the ring is closed.\n"
            "--image - means no reference image: the image writes are skipped and only\n"
            "the ring is measured.  --records is the total number of calls.  Sizes are\n"
            "multiples of 512 in [min, max] (default 512..65536; k/m/g suffixes work);\n"
            "--fixed-size makes every write B bytes.  --zero-pct makes P%% of the calls\n"
            "ZERO or TRIM.  --rate paces the calls at OPS per second in total (OPS /\n"
            "N per thread, on an absolute schedule: late calls are issued at once).\n"
            "One JSON line with the results goes to stdout; without\n"
            "--report-json a human summary also goes to stderr.\n");
}

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *s == '-')
        return false;
    uint64_t mult = 1;
    switch (*end) {
    case 'k': case 'K': mult = 1ULL << 10; end++; break;
    case 'm': case 'M': mult = 1ULL << 20; end++; break;
    case 'g': case 'G': mult = 1ULL << 30; end++; break;
    default: break;
    }
    if (*end || __builtin_mul_overflow((uint64_t)v, mult, out))
        return false;
    return true;
}

static int parse_options(int argc, char **argv, struct options *o)
{
    enum { O_RING = 256, O_IMAGE, O_THREADS, O_RECORDS, O_MIN, O_MAX, O_FIXED, O_SEED, O_ZERO, O_RATE, O_JSON };
    static const struct option longopts[] = {
        {"ring", required_argument, NULL, O_RING},
        {"image", required_argument, NULL, O_IMAGE},
        {"threads", required_argument, NULL, O_THREADS},
        {"records", required_argument, NULL, O_RECORDS},
        {"min-size", required_argument, NULL, O_MIN},
        {"max-size", required_argument, NULL, O_MAX},
        {"fixed-size", required_argument, NULL, O_FIXED},
        {"seed", required_argument, NULL, O_SEED},
        {"zero-pct", required_argument, NULL, O_ZERO},
        {"rate", required_argument, NULL, O_RATE},
        {"report-json", no_argument, NULL, O_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *o = (struct options){.threads = 1, .min_size = 512, .max_size = 65536, .seed = 1};
    uint64_t v;
    bool have_records = false;
    int c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        if (c == 'h') {
            usage(stdout);
            exit(0);
        }
        if (c == O_RING) {
            o->ring = optarg;
            continue;
        }
        if (c == O_IMAGE) {
            o->image = optarg;
            continue;
        }
        if (c == O_JSON) {
            o->report_json = true;
            continue;
        }
        if (c == '?' || !parse_u64(optarg, &v)) {
            if (c != '?')
                fprintf(stderr, "ring_stress: bad number %s\n", optarg);
            return -1;
        }
        switch (c) {
        case O_THREADS:
            if (v == 0 || v > 1024) {
                fprintf(stderr, "ring_stress: --threads must be in [1, 1024]\n");
                return -1;
            }
            o->threads = (unsigned)v;
            break;
        case O_RECORDS: o->records = v; have_records = true; break;
        case O_MIN: o->min_size = v; break;
        case O_MAX: o->max_size = v; break;
        case O_FIXED: o->fixed_size = v; break;
        case O_SEED: o->seed = v; break;
        case O_RATE:
            if (v == 0) {
                fprintf(stderr, "ring_stress: --rate must be at least 1 call per second\n");
                return -1;
            }
            o->rate = v;
            break;
        case O_ZERO:
            if (v > 100) {
                fprintf(stderr, "ring_stress: --zero-pct must be in [0, 100]\n");
                return -1;
            }
            o->zero_pct = (unsigned)v;
            break;
        default: return -1;
        }
    }
    if (optind != argc || !o->ring || !o->image || !have_records) {
        fprintf(stderr, "ring_stress: --ring, --image and --records are required\n");
        return -1;
    }
    if (!o->fixed_size && (o->min_size == 0 || o->min_size % SECTOR || o->max_size % SECTOR ||
                           o->min_size > o->max_size)) {
        fprintf(stderr, "ring_stress: sizes must be multiples of 512 with min <= max\n");
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct options o;
    if (parse_options(argc, argv, &o) < 0) {
        usage(stderr);
        return 2;
    }
    ls_ring *ring;
    int rc = ls_ring_open(o.ring, &ring);
    if (rc != LS_OK) {
        fprintf(stderr, "ring_stress: %s: %s\n", o.ring, ls_ring_strerror(rc));
        return 1;
    }
    const ls_ring_header *h = ls_ring_get_header(ring);
    uint64_t disk_size = h->disk_size;
    uint64_t part_len = (disk_size / o.threads) & ~4095ULL;
    uint64_t want = o.fixed_size ? o.fixed_size : o.min_size;
    if (part_len < want || part_len == 0) {
        fprintf(stderr, "ring_stress: a %" PRIu64 "-byte disk is too small for %u threads of %" PRIu64
                "-byte writes\n", disk_size, o.threads, want);
        ls_ring_detach(ring);
        return 1;
    }
    int image_fd = -1;  /* --image -: no reference image */
    if (strcmp(o.image, "-") != 0) {
        image_fd = open(o.image, O_RDWR | O_CLOEXEC);
        struct stat st;
        if (image_fd < 0 || fstat(image_fd, &st) < 0) {
            fprintf(stderr, "ring_stress: %s: %s\n", o.image, strerror(errno));
            if (image_fd >= 0)
                close(image_fd);
            ls_ring_detach(ring);
            return 1;
        }
        if ((uint64_t)st.st_size < disk_size) {
            fprintf(stderr, "ring_stress: %s is %lld bytes, the disk is %" PRIu64 "\n", o.image,
                    (long long)st.st_size, disk_size);
            close(image_fd);
            ls_ring_detach(ring);
            return 1;
        }
    }

    struct worker *workers = calloc(o.threads, sizeof *workers);
    if (!workers) {
        fprintf(stderr, "ring_stress: out of memory\n");
        return 1;
    }
    uint64_t seed = o.seed;
    double t0 = seconds_now();
    uint64_t schedule_start = nanos_now();
    unsigned started = 0;
    for (unsigned i = 0; i < o.threads; i++) {
        struct worker *w = &workers[i];
        w->opt = &o;
        w->ring = ring;
        w->image_fd = image_fd;
        w->part_start = part_len * i;
        w->part_len = part_len;
        w->calls = o.records / o.threads + (i < o.records % o.threads);
        w->seed = splitmix64(&seed);
        w->start_ns = schedule_start;
        rc = pthread_create(&w->thread, NULL, run_worker, w);
        if (rc != 0) {
            fprintf(stderr, "ring_stress: starting thread %u: %s\n", i, strerror(rc));
            break;
        }
        started++;
    }
    uint64_t published = 0, overflows = 0, bytes = 0, zeroes = 0, trims = 0;
    int failed = started == o.threads ? 0 : 1;
    for (unsigned i = 0; i < started; i++) {
        struct worker *w = &workers[i];
        pthread_join(w->thread, NULL);
        published += w->published;
        overflows += w->overflows;
        bytes += w->payload_bytes;
        zeroes += w->zeroes;
        trims += w->trims;
        if (w->error) {
            fprintf(stderr, "ring_stress: thread %u failed %s: %s\n", i, w->failed_at,
                    ls_ring_strerror(w->error));
            failed = 1;
        }
    }
    /* Close even after a failure, so a consumer waiting for the end sees it. */
    uint64_t final_seq = 0;
    rc = ls_ring_close(ring, &final_seq);
    if (rc != LS_OK) {
        fprintf(stderr, "ring_stress: closing %s: %s\n", o.ring, ls_ring_strerror(rc));
        failed = 1;
    }
    double seconds = seconds_now() - t0;
    printf("{\"records\": %" PRIu64 ", \"overflows\": %" PRIu64 ", \"final_seq\": %" PRIu64
           ", \"seconds\": %.6f, \"records_per_s\": %.1f, \"bytes\": %" PRIu64
           ", \"zeroes\": %" PRIu64 ", \"trims\": %" PRIu64 ", \"threads\": %u, \"rate\": %" PRIu64
           ", \"ok\": %s}\n",
           published, overflows, final_seq, seconds, seconds > 0 ? (double)published / seconds : 0.0,
           bytes, zeroes, trims, o.threads, o.rate, failed ? "false" : "true");
    fflush(stdout);
    if (!o.report_json)
        fprintf(stderr, "ring_stress: %" PRIu64 " calls (%" PRIu64 " overflowed) from %u threads in %.3f s"
                ", %.0f calls/s, %.1f MiB/s of payload, final seq %" PRIu64 "\n",
                published, overflows, o.threads, seconds, seconds > 0 ? published / seconds : 0.0,
                seconds > 0 ? bytes / seconds / (1 << 20) : 0.0, final_seq);
    if (image_fd >= 0)
        close(image_fd);
    ls_ring_detach(ring);
    free(workers);
    return failed;
}
