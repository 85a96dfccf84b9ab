/*
 * liftshift_ring.c - C producer for the liftshift shared-memory write ring.
 *
 * The layout and the protocol are specified in iofilter/ring.py; this file
 * implements its producer side for many threads and processes at once:
 *
 *   admission, before the vdisk write: range, closed, freeze, then throttle
 *   (GCRA slot on throttle_next_ns);
 *   publication, after the vdisk write: reserve under the spin lock (PAD +
 *   BUSY word + seq) -> fill outside the lock -> clear BUSY (release) ->
 *   commit walk under the lock -> full fence -> doorbell if the consumer
 *   sleeps.
 *
 * All shared words are accessed with __atomic builtins.  Words that are only
 * written under the spin lock (reserve, next_seq, commit, throttle_next_ns)
 * are still loaded and stored atomically, because readers outside the lock
 * (the consumer, status tools) load them as plain aligned words.
 */
#define _GNU_SOURCE
#include "liftshift_ring.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#define NSEC_PER_SEC 1000000000ULL

/* Process-local view of one mapped ring.  Everything here is immutable after
 * ls_ring_open(), so threads share a handle without any local locking. */
struct ls_ring {
    uint8_t *base;          /* the whole mapping */
    size_t map_len;
    ls_ring_header *hdr;    /* == base */
    uint8_t *data;          /* data area */
    uint64_t *bitmap[2];    /* dirty bitmaps 0 and 1 */
    uint64_t capacity;
    uint64_t mask;
    uint64_t disk_size;
    uint64_t chunk_size;
    uint64_t max_record;
    int bell_fd;
    uint64_t announced;     /* the id this handle stored in `producer`, 0 if none */
};

/* try_reserve() outcomes besides the LS_E* errors it passes through. */
enum { RESERVED = 0, RING_FULL = 2 };

/* What a reservation is for: a record of an admitted write (freeze is not
 * looked at: it was checked at admission, and an admitted write must be
 * published), or the CLOSE record, which also sets closed. */
enum reserve_kind { RESERVE_RECORD, RESERVE_CLOSE };

struct slot {
    uint64_t pos;   /* ring position of the record word */
    uint64_t seq;
    uint32_t size;  /* total record size */
};

/* ------------------------------------------------------------------ time */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NSEC_PER_SEC + (uint64_t)ts.tv_nsec;
}

/* Sleep until CLOCK_MONOTONIC reaches `deadline`; an absolute deadline keeps
 * signals (EINTR) from stretching the sleep. */
static void sleep_until(uint64_t deadline)
{
    struct timespec ts = {
        .tv_sec = (time_t)(deadline / NSEC_PER_SEC),
        .tv_nsec = (long)(deadline % NSEC_PER_SEC),
    };
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

/* -------------------------------------------------------------- spin lock */

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* The lock guards reservation, the commit walk and the throttle clock; every
 * critical section is a handful of loads and stores.  Waiters spin on a plain
 * load (test-and-test-and-set) so they do not steal the line from the holder,
 * and yield once spinning has clearly failed: the holder may be a preempted
 * thread of another process. */
static void ring_lock(ls_ring_header *h)
{
    unsigned spins = 0;
    for (;;) {
        uint64_t expected = 0;
        if (__atomic_compare_exchange_n(&h->lock, &expected, 1, false, __ATOMIC_ACQUIRE,
                                        __ATOMIC_RELAXED))
            return;
        while (__atomic_load_n(&h->lock, __ATOMIC_RELAXED) != 0) {
            if (spins < 2000) {
                spins++;
                cpu_relax();
            } else {
                sched_yield();
            }
        }
    }
}

static void ring_unlock(ls_ring_header *h)
{
    __atomic_store_n(&h->lock, 0, __ATOMIC_RELEASE);
}

/* ---------------------------------------------------------------- helpers */

static inline uint64_t align8(uint64_t n)
{
    return (n + 7) & ~(uint64_t)7;
}

static inline uint64_t *word_at(const ls_ring *r, uint64_t pos)
{
    return (uint64_t *)(void *)(r->data + (pos & r->mask));
}

static inline void counter_add(uint64_t *word, uint64_t n)
{
    __atomic_fetch_add(word, n, __ATOMIC_RELAXED);
}

static uint64_t empty_digest(void)
{
    return XXH3_64bits("", 0);
}

/* ------------------------------------------------------------ validation */

/* Mirror of ring.py read_geometry() + Geometry.check(), in the same order,
 * written so that no sum or product can wrap around. */
static int check_geometry(const ls_ring_header *h, uint64_t file_size)
{
    if (h->magic != LS_RING_MAGIC)
        return LS_ENOTRING;
    if (h->version != LS_RING_VERSION)
        return LS_EVERSION;
    if (h->header_size != LS_RING_HEADER_SIZE)
        return LS_EGEOMETRY;

    uint64_t c = h->capacity;
    if (c < LS_RING_MIN_CAPACITY || c > LS_RING_MAX_CAPACITY || (c & (c - 1)))
        return LS_EGEOMETRY;
    if (h->disk_size == 0 || h->disk_size % 512)
        return LS_EGEOMETRY;
    uint64_t cs = h->chunk_size;
    if (cs < 4096 || (cs & (cs - 1)))
        return LS_EGEOMETRY;
    if (h->max_record == 0 || h->max_record > (c - 2 * LS_RING_RECORD_HEADER) / 2 ||
        h->max_record % 8)
        return LS_EGEOMETRY;
    if (h->bitmap_offset != LS_RING_HEADER_SIZE)
        return LS_EGEOMETRY;
    uint64_t chunks = h->disk_size / cs + (h->disk_size % cs != 0);
    if (h->bitmap_bytes < chunks / 8 + (chunks % 8 != 0) || h->bitmap_bytes % LS_RING_LINE)
        return LS_EGEOMETRY;
    uint64_t bitmaps_end;
    if (__builtin_mul_overflow(h->bitmap_bytes, 2, &bitmaps_end) ||
        __builtin_add_overflow(bitmaps_end, h->bitmap_offset, &bitmaps_end) ||
        h->data_offset < bitmaps_end || h->data_offset % 4096)
        return LS_EGEOMETRY;
    uint64_t layout_size;
    if (__builtin_add_overflow(h->data_offset, c, &layout_size) || file_size < layout_size ||
        layout_size > SIZE_MAX)
        return LS_EGEOMETRY;
    return LS_OK;
}

/* ------------------------------------------------------------ open/detach */

static int open_bell(const char *path)
{
    static const char suffix[] = ".bell";
    size_t n = strlen(path);
    char *bell = malloc(n + sizeof suffix);
    if (!bell)
        return -ENOMEM;
    memcpy(bell, path, n);
    memcpy(bell + n, suffix, sizeof suffix);
    /* O_RDWR: opening a FIFO never blocks that way, and while we hold a read
     * end our writes can never raise SIGPIPE even when no consumer listens. */
    int fd = open(bell, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    int err = errno;
    free(bell);
    if (fd < 0)
        return -err;
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISFIFO(st.st_mode)) {
        close(fd);
        return -EINVAL;  /* a regular file would grow by a byte per doorbell */
    }
    return fd;
}

int ls_ring_open(const char *path, ls_ring **out)
{
    if (!path || !out)
        return -EINVAL;
    *out = NULL;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return -errno;

    int rc;
    struct stat st;
    ls_ring_header hdr;
    if (fstat(fd, &st) < 0) {
        rc = -errno;
        goto fail_fd;
    }
    if ((uint64_t)st.st_size < LS_RING_HEADER_SIZE) {
        rc = LS_ENOTRING;
        goto fail_fd;
    }
    size_t got = 0;
    while (got < sizeof hdr) {
        ssize_t n = pread(fd, (char *)&hdr + got, sizeof hdr - got, (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = -errno;
            goto fail_fd;
        }
        if (n == 0) {
            rc = LS_ENOTRING;
            goto fail_fd;
        }
        got += (size_t)n;
    }
    rc = check_geometry(&hdr, (uint64_t)st.st_size);
    if (rc != LS_OK)
        goto fail_fd;

    ls_ring *r = calloc(1, sizeof *r);
    if (!r) {
        rc = -ENOMEM;
        goto fail_fd;
    }
    r->map_len = (size_t)(hdr.data_offset + hdr.capacity);
    /* MAP_POPULATE faults every page in now (as ring.py's Mapped does), so a
     * guest write never pays for the first touch of a part of the ring. */
    void *base = mmap(NULL, r->map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (base == MAP_FAILED) {
        rc = -errno;
        free(r);
        goto fail_fd;
    }
    close(fd);  /* the mapping keeps the file */

    rc = open_bell(path);
    if (rc < 0) {
        munmap(base, r->map_len);
        free(r);
        return rc;
    }
    r->bell_fd = rc;
    r->base = base;
    r->hdr = base;
    r->data = r->base + hdr.data_offset;
    r->bitmap[0] = (uint64_t *)(void *)(r->base + hdr.bitmap_offset);
    r->bitmap[1] = (uint64_t *)(void *)(r->base + hdr.bitmap_offset + hdr.bitmap_bytes);
    r->capacity = hdr.capacity;
    r->mask = hdr.capacity - 1;
    r->disk_size = hdr.disk_size;
    r->chunk_size = hdr.chunk_size;
    r->max_record = hdr.max_record;
    *out = r;
    return LS_OK;

fail_fd:
    close(fd);
    return rc;
}

void ls_ring_detach(ls_ring *r)
{
    if (!r)
        return;
    if (r->announced)
        __atomic_store_n(&r->hdr->producer, 0, __ATOMIC_RELEASE);
    close(r->bell_fd);
    munmap(r->base, r->map_len);
    free(r);
}

void ls_ring_announce(ls_ring *r, uint64_t id)
{
    r->announced = id;
    __atomic_store_n(&r->hdr->producer, id, __ATOMIC_RELEASE);
}

const ls_ring_header *ls_ring_get_header(const ls_ring *r)
{
    return r->hdr;
}

/* ------------------------------------------------------ producer protocol */

/* Step 1: take a slot on the shared GCRA clock and sleep until it comes.
 * The clock is CLOCK_MONOTONIC, common to every process on the host. */
static void throttle(ls_ring *r, uint64_t len)
{
    ls_ring_header *h = r->hdr;
    uint64_t bps = __atomic_load_n(&h->throttle_bps, __ATOMIC_RELAXED);
    uint64_t iops = __atomic_load_n(&h->throttle_iops, __ATOMIC_RELAXED);
    if (!bps && !iops)
        return;
    uint64_t cost = 0;
    if (bps) {
        /* 128-bit so that a multi-GiB TRIM at a low rate cannot wrap; the
         * clamp keeps slot + cost far from wrapping too (~146 years). */
        unsigned __int128 c = (unsigned __int128)len * NSEC_PER_SEC / bps;
        cost = c > (1ULL << 62) ? (1ULL << 62) : (uint64_t)c;
    }
    if (iops && NSEC_PER_SEC / iops > cost)
        cost = NSEC_PER_SEC / iops;

    ring_lock(h);
    uint64_t now = now_ns();
    uint64_t next = __atomic_load_n(&h->throttle_next_ns, __ATOMIC_RELAXED);
    uint64_t slot = next > now ? next : now;
    __atomic_store_n(&h->throttle_next_ns, slot + cost, __ATOMIC_RELAXED);
    ring_unlock(h);

    if (slot > now) {
        sleep_until(slot);
        /* What the guest was actually held back, oversleeping included. */
        counter_add(&h->throttled_ns, now_ns() - now);
    }
}

/* Step 3: reserve `size` bytes (and the PAD in front of them, if the tail is
 * too short) under the lock.  Returns RESERVED and fills *s, RING_FULL, or
 * LS_ECLOSED without having changed anything. */
static int try_reserve(ls_ring *r, uint32_t size, enum reserve_kind kind, struct slot *s)
{
    ls_ring_header *h = r->hdr;
    int rc;
    ring_lock(h);
    /* Checked under the lock, where CLOSE sets it: no record can ever take a
     * sequence after the CLOSE record's. */
    if (__atomic_load_n(&h->closed, __ATOMIC_RELAXED)) {
        rc = LS_ECLOSED;
        goto out;
    }
    uint64_t reserve = __atomic_load_n(&h->reserve, __ATOMIC_RELAXED);
    /* Acquire: the consumer copied the payloads out before it stored
     * release, so our stores into the freed space must come after. */
    uint64_t release = __atomic_load_n(&h->release, __ATOMIC_ACQUIRE);
    uint64_t pos = reserve & r->mask;
    uint64_t tail = r->capacity - pos;
    uint64_t pad = tail < size ? tail : 0;
    /* Unsigned: a release beyond reserve (a broken consumer) reads as full. */
    if (reserve + pad + size - release > r->capacity) {
        rc = RING_FULL;
        goto out;
    }
    if (pad)  /* PAD is complete at once: the commit walk steps over it */
        __atomic_store_n(word_at(r, reserve), pad | LS_WORD_PAD, __ATOMIC_RELAXED);
    uint64_t start = reserve + pad;
    __atomic_store_n(word_at(r, start), (uint64_t)size | LS_WORD_BUSY, __ATOMIC_RELAXED);
    uint64_t seq = __atomic_load_n(&h->next_seq, __ATOMIC_RELAXED);
    __atomic_store_n(&h->next_seq, seq + 1, __ATOMIC_RELAXED);
    if (kind == RESERVE_CLOSE)
        __atomic_store_n(&h->closed, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&h->reserve, start + size, __ATOMIC_RELEASE);
    s->pos = start;
    s->seq = seq;
    s->size = size;
    rc = RESERVED;
out:
    ring_unlock(h);
    return rc;
}

/* Retry a full ring for at most overflow_wait_ns (re-read every round so the
 * daemon can change it live): a yield first, since the consumer is often
 * about to release, then short sleeps that never overshoot the deadline. */
static int reserve_or_wait(ls_ring *r, uint32_t size, enum reserve_kind kind, struct slot *s)
{
    int rc = try_reserve(r, size, kind, s);
    if (rc != RING_FULL)
        return rc;
    uint64_t start = now_ns();
    for (unsigned round = 0;; round++) {
        uint64_t wait = __atomic_load_n(&r->hdr->overflow_wait_ns, __ATOMIC_RELAXED);
        uint64_t elapsed = now_ns() - start;
        if (elapsed >= wait)
            return RING_FULL;
        if (round == 0) {
            sched_yield();
        } else {
            uint64_t step = round < 4 ? 20000 : 50000;
            uint64_t left = wait - elapsed;
            sleep_until(now_ns() + (step < left ? step : left));
        }
        rc = try_reserve(r, size, kind, s);
        if (rc != RING_FULL)
            return rc;
    }
}

/* Step 4: fill the reserved record outside the lock, then clear BUSY with a
 * release store so that a commit walker (acquire) sees the whole record. */
static void fill(ls_ring *r, const struct slot *s, uint32_t flags, uint64_t offset,
                 uint64_t length, const void *payload, uint32_t paylen, uint64_t digest)
{
    uint8_t *at = r->data + (s->pos & r->mask);
    ls_record_header *rec = (ls_record_header *)(void *)at;
    rec->seq = s->seq;
    rec->offset = offset;
    rec->length = length;
    rec->flags = flags;
    rec->paylen = paylen;
    rec->xxh3 = digest;
    if (paylen) {
        memcpy(at + LS_RING_RECORD_HEADER, payload, paylen);
        /* Zero the alignment bytes: no stale bytes of an older lap leak out. */
        memset(at + LS_RING_RECORD_HEADER + paylen, 0, align8(paylen) - paylen);
    }
    rec->time_ns = now_ns();
    __atomic_store_n(&rec->word, (uint64_t)s->size, __ATOMIC_RELEASE);
}

/* Step 5: publish every finished record from commit on.  Whoever walks last
 * publishes the records of slower neighbours too, so nobody waits for them. */
static void commit_walk(ls_ring *r)
{
    ls_ring_header *h = r->hdr;
    ring_lock(h);
    uint64_t start = __atomic_load_n(&h->commit, __ATOMIC_RELAXED);
    uint64_t end = __atomic_load_n(&h->reserve, __ATOMIC_RELAXED);
    uint64_t c = start;
    while (c < end) {
        uint64_t w = __atomic_load_n(word_at(r, c), __ATOMIC_ACQUIRE);
        if (w & LS_WORD_BUSY)
            break;
        uint64_t len = w & LS_WORD_LEN_MASK;
        /* Every word in [commit, reserve) was written under the lock, so this
         * cannot fail; if memory is scribbled on, stop instead of looping. */
        if (len == 0 || (len & 7) || len > end - c)
            break;
        c += len;
    }
    if (c != start)
        __atomic_store_n(&h->commit, c, __ATOMIC_RELEASE);
    ring_unlock(h);
}

/* Step 6: the full fence orders our commit store before the consumer_waiting
 * load; the consumer stores consumer_waiting, fences and re-reads commit, so
 * one of the two sides always sees the other and no wake-up is lost. */
static void ring_bell(ls_ring *r)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (!__atomic_load_n(&r->hdr->consumer_waiting, __ATOMIC_RELAXED))
        return;
    int saved = errno;
    static const char one = 1;
    ssize_t n;
    do {
        n = write(r->bell_fd, &one, 1);
    } while (n < 0 && errno == EINTR);
    /* EAGAIN: the FIFO is full, so the consumer has wake-ups queued already. */
    errno = saved;
}

/* Overflow: set the range's chunk bits in the active bitmap.  The daemon
 * harvests by bumping dirty_epoch, fencing, then reading and zeroing the old
 * bitmap; re-reading the epoch after our own fence means a bit the harvest
 * may have missed is marked again in the new active bitmap. */
static void mark_dirty(ls_ring *r, uint64_t offset, uint64_t len)
{
    ls_ring_header *h = r->hdr;
    uint64_t first = offset / r->chunk_size;
    uint64_t last = (offset + len - 1) / r->chunk_size;
    uint64_t epoch = __atomic_load_n(&h->dirty_epoch, __ATOMIC_ACQUIRE);
    for (;;) {
        uint64_t *bm = r->bitmap[epoch & 1];
        for (uint64_t w = first / 64; w <= last / 64; w++) {
            uint64_t lo = first > w * 64 ? first - w * 64 : 0;
            uint64_t hi = last < w * 64 + 63 ? last - w * 64 : 63;
            uint64_t bits = hi - lo == 63 ? ~0ULL : ((1ULL << (hi - lo + 1)) - 1) << lo;
            __atomic_fetch_or(&bm[w], bits, __ATOMIC_RELAXED);
        }
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        uint64_t now = __atomic_load_n(&h->dirty_epoch, __ATOMIC_ACQUIRE);
        if (now == epoch)
            return;
        epoch = now;
    }
}

static int check_range(const ls_ring *r, uint64_t offset, uint64_t len)
{
    if (len == 0 || offset > r->disk_size || len > r->disk_size - offset)
        return LS_ERANGE;
    return LS_OK;
}

int ls_ring_admit(ls_ring *r, uint64_t offset, uint64_t len)
{
    if (!r)
        return -EINVAL;
    int rc = check_range(r, offset, len);
    if (rc != LS_OK)
        return rc;
    ls_ring_header *h = r->hdr;
    if (__atomic_load_n(&h->closed, __ATOMIC_ACQUIRE))
        return LS_ECLOSED;
    /* Freeze is decided here, before anything reaches the vdisk, and only
     * here: what passes this point is published whatever freeze does next.
     * The daemon's barrier is the CLOSE record, not this check. */
    if (__atomic_load_n(&h->freeze, __ATOMIC_ACQUIRE)) {
        counter_add(&h->frozen_rejects, 1);
        return LS_EFROZEN;
    }
    throttle(r, len);
    return LS_OK;
}

/* Publish one admitted call: one record per piece, no freeze check and no
 * throttle.  `data` NULL means a payload-less ZERO / TRIM range. */
static int publish(ls_ring *r, uint32_t flags, uint64_t offset, const uint8_t *data, uint64_t len)
{
    if (!r)
        return -EINVAL;
    int rc = check_range(r, offset, len);
    if (rc != LS_OK)
        return rc;
    ls_ring_header *h = r->hdr;
    /* Cheap early refusal; try_reserve checks again under the lock. */
    if (__atomic_load_n(&h->closed, __ATOMIC_ACQUIRE))
        return LS_ECLOSED;

    uint64_t step = data ? r->max_record : LS_RING_MAX_RANGE_RECORD;
    uint64_t nodata = data ? 0 : empty_digest();
    for (uint64_t done = 0; done < len;) {
        uint64_t part = len - done < step ? len - done : step;
        uint32_t paylen = data ? (uint32_t)part : 0;
        /* Hash before reserving: reserved space is what the others wait on. */
        uint64_t digest = data ? XXH3_64bits(data + done, part) : nodata;
        struct slot s;
        rc = reserve_or_wait(r, (uint32_t)(LS_RING_RECORD_HEADER + align8(paylen)), RESERVE_RECORD,
                             &s);
        if (rc == RING_FULL) {
            /* The guest must not wait any longer: the rest of the call goes
             * to the bitmap at once, and the daemon resyncs it from the vdisk. */
            mark_dirty(r, offset + done, len - done);
            counter_add(&h->overflows, 1);
            counter_add(&h->overflow_bytes, len - done);
            counter_add(&h->writes, 1);
            counter_add(&h->bytes, len);
            return LS_OVERFLOWED;
        }
        if (rc != RESERVED)
            return rc;
        fill(r, &s, flags, offset + done, part, data ? data + done : NULL, paylen, digest);
        commit_walk(r);
        ring_bell(r);
        done += part;
    }
    counter_add(&h->writes, 1);
    counter_add(&h->bytes, len);
    return LS_OK;
}

int ls_ring_publish_write(ls_ring *r, uint64_t offset, const void *data, uint64_t len)
{
    if (!data)
        return -EINVAL;
    return publish(r, LS_FLAG_WRITE, offset, data, len);
}

int ls_ring_publish_zeroes(ls_ring *r, uint64_t offset, uint64_t len)
{
    return publish(r, LS_FLAG_ZERO, offset, NULL, len);
}

int ls_ring_publish_trim(ls_ring *r, uint64_t offset, uint64_t len)
{
    return publish(r, LS_FLAG_TRIM, offset, NULL, len);
}

int ls_ring_write(ls_ring *r, uint64_t offset, const void *data, uint64_t len)
{
    if (!data)  /* before admission, so that a bad call costs no throttle slot */
        return -EINVAL;
    int rc = ls_ring_admit(r, offset, len);
    return rc != LS_OK ? rc : ls_ring_publish_write(r, offset, data, len);
}

int ls_ring_write_zeroes(ls_ring *r, uint64_t offset, uint64_t len)
{
    int rc = ls_ring_admit(r, offset, len);
    return rc != LS_OK ? rc : ls_ring_publish_zeroes(r, offset, len);
}

int ls_ring_trim(ls_ring *r, uint64_t offset, uint64_t len)
{
    int rc = ls_ring_admit(r, offset, len);
    return rc != LS_OK ? rc : ls_ring_publish_trim(r, offset, len);
}

int ls_ring_close(ls_ring *r, uint64_t *final_seq)
{
    if (!r)
        return -EINVAL;
    if (__atomic_load_n(&r->hdr->closed, __ATOMIC_ACQUIRE))
        return LS_ECLOSED;
    struct slot s;
    uint64_t deadline = now_ns() + LS_RING_CLOSE_WAIT_NS;
    int rc;
    /* CLOSE must not be lost to an overflow: it tells the daemon the stream
     * is complete, so it waits for the consumer to free space. */
    while ((rc = try_reserve(r, LS_RING_RECORD_HEADER, RESERVE_CLOSE, &s)) == RING_FULL) {
        uint64_t now = now_ns();
        if (now >= deadline)
            return LS_ETIMEDOUT;
        sleep_until(now + 500000);
    }
    if (rc != RESERVED)
        return rc;
    fill(r, &s, LS_FLAG_CLOSE, 0, 0, NULL, 0, empty_digest());
    commit_walk(r);
    ring_bell(r);
    if (final_seq)
        *final_seq = s.seq;
    return LS_OK;
}

/* ----------------------------------------------------------- diagnostics */

const char *ls_ring_strerror(int rc)
{
    switch (rc) {
    case LS_OK:
        return "success";
    case LS_OVERFLOWED:
        return "the ring stayed full: the range was marked in the dirty bitmap";
    case LS_ENOTRING:
        return "not a liftshift ring (bad magic or too short)";
    case LS_EVERSION:
        return "ring layout version not supported by this build";
    case LS_EGEOMETRY:
        return "the ring header describes an impossible geometry";
    case LS_EFROZEN:
        return "writes are frozen: the source VM is being stopped for cutover";
    case LS_ECLOSED:
        return "the ring is closed; no more writes are accepted";
    case LS_ERANGE:
        return "the range is empty or outside the disk";
    case LS_ETIMEDOUT:
        return "no ring space for the CLOSE record: the consumer is not releasing";
    default:
        break;
    }
    if (rc < 0 && rc >= -4095) {
        const char *s = strerrordesc_np(-rc);
        if (s)
            return s;
    }
    return "unknown liftshift ring error";
}

#define FIELD(n) {#n, offsetof(ls_ring_header, n)}
static const struct {
    const char *name;
    uint64_t offset;
} layout[] = {
    FIELD(magic),          FIELD(version),          FIELD(header_size),  FIELD(capacity),
    FIELD(disk_size),      FIELD(chunk_size),       FIELD(max_record),   FIELD(bitmap_offset),
    FIELD(bitmap_bytes),   FIELD(data_offset),      FIELD(reserve),      FIELD(next_seq),
    FIELD(lock),           FIELD(throttle_next_ns), FIELD(commit),       FIELD(release),
    FIELD(writes),         FIELD(bytes),            FIELD(overflows),    FIELD(overflow_bytes),
    FIELD(throttled_ns),   FIELD(frozen_rejects),   FIELD(closed),       FIELD(producer), FIELD(throttle_bps),
    FIELD(throttle_iops),  FIELD(freeze),           FIELD(overflow_wait_ns), FIELD(dirty_epoch),
    FIELD(consumer_waiting),
};
#undef FIELD

int ls_ring_layout(const char *name, uint64_t *offset)
{
    if (!name)
        return -1;
    for (size_t i = 0; i < sizeof layout / sizeof layout[0]; i++) {
        if (strcmp(layout[i].name, name) == 0) {
            if (offset)
                *offset = layout[i].offset;
            return 0;
        }
    }
    return -1;
}

uint64_t ls_ring_scan(const void *buf, uint64_t n, uint64_t expect, int have_expect, ls_scan *out)
{
    const uint8_t *b = buf;
    uint64_t o = 0;
    memset(out, 0, sizeof *out);
    if (!b)
        return 0;
    while (n - o >= sizeof(ls_record_header)) {
        ls_record_header h;
        memcpy(&h, b + o, sizeof h);  /* the copy may sit at any offset of the caller's buffer */
        uint64_t size = h.word & LS_WORD_LEN_MASK;
        if (h.word >> 62 || size < sizeof h || (size & 7) || size > n - o || h.paylen > size - sizeof h)
            break;
        if (have_expect && h.seq != expect)
            break;
        if (XXH3_64bits(b + o + sizeof h, h.paylen) != h.xxh3)
            break;
        out->count++;
        out->payload += h.paylen;
        out->last_seq = h.seq;
        out->last_time_ns = h.time_ns;
        out->last_flags = h.flags;
        expect = h.seq + 1;
        have_expect = 1;
        o += size;
    }
    return o;
}
