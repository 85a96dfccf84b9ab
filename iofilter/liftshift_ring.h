/*
 * liftshift_ring.h - C producer for the liftshift shared-memory write ring.
 *
 * The binary layout and the producer protocol are defined once, in
 * iofilter/ring.py (read its design note first).  This header mirrors that
 * layout field by field; tests/test_ring_c.py proves the two agree, through
 * ls_ring_layout() and the constants below.
 *
 * A VAIO filter links libliftshift_ring.so and opens the ring of each
 * virtual disk with ls_ring_open().  Every function is thread-safe, and
 * several processes may produce into one ring at once: they coordinate
 * through the spin lock word in the shared header, never through
 * process-local state.
 *
 * Calling sequence of a filter, for every guest write / zero / trim:
 *   1. ls_ring_admit() BEFORE the IO goes to the vdisk; on any error fail
 *      (or hold) the guest IO without touching the vdisk;
 *   2. write the vdisk;
 *   3. ls_ring_publish_write() / _zeroes() / _trim() AFTER the vdisk write
 *      completed (not if it failed).
 * Freeze is decided once, at admission: a write admitted before the daemon
 * set freeze is still published, so freeze never loses a write.  The
 * barrier after which nothing more is published is the CLOSE record
 * (ls_ring_close()), which the cutover appends once the VM has stopped and
 * all its IO has completed, hence every admitted write has been published.
 * ls_ring_write() and friends do admit + publish in one call, for callers
 * with no separate vdisk write in between.
 *
 * Producer death: if a producer process dies while it holds the spin lock
 * (a critical section of a few loads and stores), the lock is never
 * released and the ring is wedged: every later producer call spins (and
 * yields) forever; the consumer, which never takes the lock, is not
 * affected.  There is no lock recovery: the producers of one ring all live
 * in the one VM process that owns the vdisk, so this only happens when the
 * VM itself died, and a ring left in that state is recreated, not reused.
 *
 * C11 (gnu11) header; link with -lxxhash -lpthread.
 */
#ifndef LIFTSHIFT_RING_H
#define LIFTSHIFT_RING_H

#include <stddef.h>
#include <stdint.h>

/* The layout is little-endian and the words are accessed in place. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the ring layout is little-endian");

#define LS_RING_MAGIC 0x474E495254464C4CULL /* b"LLFTRING" read as a little-endian u64 */
#define LS_RING_VERSION 1u
#define LS_RING_HEADER_SIZE 4096u
#define LS_RING_LINE 64u
#define LS_RING_MIN_CAPACITY (1ULL << 12)
#define LS_RING_MAX_CAPACITY (1ULL << 40)

/* Bytes of a record header; the payload follows, padded to 8 bytes. */
#define LS_RING_RECORD_HEADER 56

/* Bits of a record's first word (bits 0-31 hold the total record size). */
#define LS_WORD_BUSY (1ULL << 63)
#define LS_WORD_PAD (1ULL << 62)
#define LS_WORD_LEN_MASK 0xFFFFFFFFULL

/* Record flags. */
#define LS_FLAG_WRITE 1u
#define LS_FLAG_ZERO 2u
#define LS_FLAG_TRIM 4u
#define LS_FLAG_CLOSE 8u

/* ZERO and TRIM ranges longer than this are split into several records. */
#define LS_RING_MAX_RANGE_RECORD (1ULL << 30)

/* How long ls_ring_close() waits for ring space before LS_ETIMEDOUT. */
#define LS_RING_CLOSE_WAIT_NS 30000000000ULL

/*
 * Return codes.  0 is success; LS_OVERFLOWED is a (positive) success that
 * went to the dirty bitmap instead of the ring.  Negative values below -4095
 * are ring errors; -1 .. -4095 are -errno from a system call.
 */
#define LS_OK 0
#define LS_OVERFLOWED 1          /* ring stayed full: the range is in the dirty bitmap */
#define LS_ENOTRING (-10001)     /* bad magic or a file shorter than a header */
#define LS_EVERSION (-10002)     /* ring layout version this build cannot read */
#define LS_EGEOMETRY (-10003)    /* the header describes an impossible geometry */
#define LS_EFROZEN (-10004)      /* writes are frozen for cutover */
#define LS_ECLOSED (-10005)      /* the ring carries a CLOSE record */
#define LS_ERANGE (-10006)       /* empty range, or a range past the end of the disk */
#define LS_ETIMEDOUT (-10007)    /* CLOSE found no ring space within 30 s */

/*
 * The header page.  Each group starts a new 64-byte line so that producers
 * and the consumer never write the same cache line (see ring.py HEADER).
 * Words that change after creation must be accessed with __atomic builtins.
 */
typedef struct ls_ring_header {
    /* line 0: identity and geometry, written once at creation */
    _Alignas(64) uint64_t magic;
    uint32_t version;
    uint32_t header_size;
    uint64_t capacity;          /* data area bytes, a power of two */
    uint64_t disk_size;         /* vdisk bytes */
    uint32_t chunk_size;        /* disk bytes per dirty-bitmap bit */
    uint32_t max_record;        /* largest WRITE payload of one record */
    uint64_t bitmap_offset;     /* file offset of dirty bitmap 0 */
    uint64_t bitmap_bytes;      /* bytes of each of the two bitmaps */
    uint64_t data_offset;       /* file offset of the data area */
    /* line 1: producer reservation state (guarded by lock) */
    _Alignas(64) uint64_t reserve;
    uint64_t next_seq;
    uint64_t lock;              /* spin lock: CAS 0 -> 1 acquire, store 0 release */
    uint64_t throttle_next_ns;  /* GCRA virtual clock, CLOCK_MONOTONIC ns */
    /* line 2 */
    _Alignas(64) uint64_t commit;
    /* line 3: written by the consumer only */
    _Alignas(64) uint64_t release;
    /* line 4: producer counters */
    _Alignas(64) uint64_t writes;
    uint64_t bytes;
    uint64_t overflows;
    uint64_t overflow_bytes;
    uint64_t throttled_ns;
    uint64_t frozen_rejects;
    uint64_t closed;
    uint64_t producer;          /* nonzero while a filter announces it publishes every write (its id) */
    /* line 5: control words written by the daemon */
    _Alignas(64) uint64_t throttle_bps;
    uint64_t throttle_iops;
    uint64_t freeze;
    uint64_t overflow_wait_ns;
    uint64_t dirty_epoch;
    /* line 6: doorbell handshake (consumer writes, producers read) */
    _Alignas(64) uint64_t consumer_waiting;
    uint8_t reserved_[LS_RING_HEADER_SIZE - 392];
} ls_ring_header;

_Static_assert(offsetof(ls_ring_header, magic) == 0, "magic");
_Static_assert(offsetof(ls_ring_header, version) == 8, "version");
_Static_assert(offsetof(ls_ring_header, header_size) == 12, "header_size");
_Static_assert(offsetof(ls_ring_header, capacity) == 16, "capacity");
_Static_assert(offsetof(ls_ring_header, disk_size) == 24, "disk_size");
_Static_assert(offsetof(ls_ring_header, chunk_size) == 32, "chunk_size");
_Static_assert(offsetof(ls_ring_header, max_record) == 36, "max_record");
_Static_assert(offsetof(ls_ring_header, bitmap_offset) == 40, "bitmap_offset");
_Static_assert(offsetof(ls_ring_header, bitmap_bytes) == 48, "bitmap_bytes");
_Static_assert(offsetof(ls_ring_header, data_offset) == 56, "data_offset");
_Static_assert(offsetof(ls_ring_header, reserve) == 64, "reserve");
_Static_assert(offsetof(ls_ring_header, next_seq) == 72, "next_seq");
_Static_assert(offsetof(ls_ring_header, lock) == 80, "lock");
_Static_assert(offsetof(ls_ring_header, throttle_next_ns) == 88, "throttle_next_ns");
_Static_assert(offsetof(ls_ring_header, commit) == 128, "commit");
_Static_assert(offsetof(ls_ring_header, release) == 192, "release");
_Static_assert(offsetof(ls_ring_header, writes) == 256, "writes");
_Static_assert(offsetof(ls_ring_header, bytes) == 264, "bytes");
_Static_assert(offsetof(ls_ring_header, overflows) == 272, "overflows");
_Static_assert(offsetof(ls_ring_header, overflow_bytes) == 280, "overflow_bytes");
_Static_assert(offsetof(ls_ring_header, throttled_ns) == 288, "throttled_ns");
_Static_assert(offsetof(ls_ring_header, frozen_rejects) == 296, "frozen_rejects");
_Static_assert(offsetof(ls_ring_header, closed) == 304, "closed");
_Static_assert(offsetof(ls_ring_header, producer) == 312, "producer");
_Static_assert(offsetof(ls_ring_header, throttle_bps) == 320, "throttle_bps");
_Static_assert(offsetof(ls_ring_header, throttle_iops) == 328, "throttle_iops");
_Static_assert(offsetof(ls_ring_header, freeze) == 336, "freeze");
_Static_assert(offsetof(ls_ring_header, overflow_wait_ns) == 344, "overflow_wait_ns");
_Static_assert(offsetof(ls_ring_header, dirty_epoch) == 352, "dirty_epoch");
_Static_assert(offsetof(ls_ring_header, consumer_waiting) == 384, "consumer_waiting");
_Static_assert(sizeof(ls_ring_header) == LS_RING_HEADER_SIZE, "header page size");

/* A record header in the data area; the payload follows at byte 56. */
typedef struct ls_record_header {
    uint64_t word;    /* bits 0-31 total record size, LS_WORD_BUSY, LS_WORD_PAD */
    uint64_t seq;     /* strictly increasing, contiguous per ring */
    uint64_t offset;  /* byte offset in the vdisk */
    uint64_t length;  /* bytes covered on the vdisk */
    uint32_t flags;   /* LS_FLAG_* */
    uint32_t paylen;  /* payload bytes (== length for WRITE, 0 otherwise) */
    uint64_t xxh3;    /* XXH3-64 (seed 0) of the payload, of "" when there is none */
    uint64_t time_ns; /* CLOCK_MONOTONIC when the producer committed the record */
} ls_record_header;

_Static_assert(offsetof(ls_record_header, word) == 0, "word");
_Static_assert(offsetof(ls_record_header, seq) == 8, "seq");
_Static_assert(offsetof(ls_record_header, offset) == 16, "offset");
_Static_assert(offsetof(ls_record_header, length) == 24, "length");
_Static_assert(offsetof(ls_record_header, flags) == 32, "flags");
_Static_assert(offsetof(ls_record_header, paylen) == 36, "paylen");
_Static_assert(offsetof(ls_record_header, xxh3) == 40, "xxh3");
_Static_assert(offsetof(ls_record_header, time_ns) == 48, "time_ns");
_Static_assert(sizeof(ls_record_header) == LS_RING_RECORD_HEADER, "record header size");

/* An open ring (opaque).  One handle may be shared by any number of threads. */
typedef struct ls_ring ls_ring;

/*
 * Map the ring file at `path` and open its doorbell FIFO `<path>.bell`.
 * The header is validated exactly as ring.py's read_geometry() does.
 * Returns 0 and sets *out, or LS_ENOTRING, LS_EVERSION, LS_EGEOMETRY, or
 * -errno (-EINVAL when `<path>.bell` exists but is not a FIFO).
 */
int ls_ring_open(const char *path, ls_ring **out);

/* Unmap the ring and close the doorbell (NULL is fine); clears `producer`
 * if this handle announced itself, writes nothing else. */
void ls_ring_detach(ls_ring *ring);

/*
 * Announce that every later write of this filter is published into the ring:
 * store `id` (nonzero, e.g. the VMX process id) in the header's `producer`
 * word (release).  A filter that attaches on its own (the storage policy put
 * it on the disk) calls this once it publishes; the daemon waits for it
 * before it copies anything.
 */
void ls_ring_announce(ls_ring *ring, uint64_t id);

/*
 * Admit a guest write / zero / trim of `len` bytes at vdisk `offset`; call
 * it BEFORE the IO goes to the vdisk.  Checks, in this order: LS_ERANGE (len
 * 0 or past the end of the disk), LS_ECLOSED, LS_EFROZEN (counted in
 * frozen_rejects); then waits for the throttle: one GCRA slot per call, the
 * time slept added to throttled_ns.  Returns 0 when the IO may proceed (and
 * must then be published once it reached the vdisk), or one of those errors
 * (or -EINVAL for a NULL ring), which leave the ring untouched.
 */
int ls_ring_admit(ls_ring *ring, uint64_t offset, uint64_t len);

/*
 * Publish an admitted WRITE of `len` bytes of `data` at vdisk `offset`; call
 * it after the write has reached the vdisk.  Freeze is not checked (the call
 * was admitted; freeze must not lose it) and there is no throttle wait.
 * Writes longer than the header's max_record become several records,
 * published in order.
 *
 * Returns 0 when recorded in the ring; LS_OVERFLOWED when the ring stayed
 * full for overflow_wait_ns and the not yet published part of the range was
 * marked in the dirty bitmap instead; or an error that leaves the ring
 * untouched: LS_ERANGE, LS_ECLOSED (the CLOSE record is reserved: calling
 * this then breaks the calling sequence above), -EINVAL (data NULL).  Only a
 * caller that closes the ring while its own writes are in flight can see
 * LS_ECLOSED after a partial publication.
 *
 * Counters: a call that returns 0 or LS_OVERFLOWED adds 1 to writes and len
 * to bytes; an overflow also adds 1 to overflows and the bytes sent to the
 * bitmap to overflow_bytes.  The guest waits for at most one
 * overflow_wait_ns per call: when one record of a split call overflows, the
 * rest of the call goes to the bitmap without waiting again.
 */
int ls_ring_publish_write(ls_ring *ring, uint64_t offset, const void *data, uint64_t len);

/* Publish an admitted ZERO (the range reads back as zeros); returns as ls_ring_publish_write(). */
int ls_ring_publish_zeroes(ls_ring *ring, uint64_t offset, uint64_t len);

/* Publish an admitted TRIM (the range is discarded, reads back as zeros); returns as ls_ring_publish_write(). */
int ls_ring_publish_trim(ls_ring *ring, uint64_t offset, uint64_t len);

/*
 * ls_ring_admit() + ls_ring_publish_write() in one call, for a caller with
 * no separate vdisk write in between.  Returns the first error of either
 * (-EINVAL for NULL data before admission), else the publication's result.
 */
int ls_ring_write(ls_ring *ring, uint64_t offset, const void *data, uint64_t len);

/* ls_ring_admit() + ls_ring_publish_zeroes(); returns as ls_ring_write(). */
int ls_ring_write_zeroes(ls_ring *ring, uint64_t offset, uint64_t len);

/* ls_ring_admit() + ls_ring_publish_trim(); returns as ls_ring_write(). */
int ls_ring_trim(ls_ring *ring, uint64_t offset, uint64_t len);

/*
 * Append the CLOSE record, whose sequence is the ring's final one (stored in
 * *final_seq when not NULL), and set `closed`.  Call it after every admitted
 * write of the ring has been published (the VM has stopped and all its IO
 * completed); after it every publish returns LS_ECLOSED.  Unlike a write, CLOSE waits for ring space, up to
 * 30 s (then LS_ETIMEDOUT and the ring stays open).  Freeze does not stop it.
 * Returns 0, LS_ECLOSED when already closed, or LS_ETIMEDOUT.
 */
int ls_ring_close(ls_ring *ring, uint64_t *final_seq);

/*
 * The mapped header, for reading geometry and counters.  Read words that
 * change after creation with __atomic_load_n; never write through it.
 */
const ls_ring_header *ls_ring_get_header(const ls_ring *ring);

/* A static English description of any return code of this library. */
const char *ls_ring_strerror(int rc);

/*
 * The byte offset of the header field `name` (a key of ring.py's HEADER),
 * for tests that prove the C and Python layouts agree.  Returns 0 and sets
 * *offset, or -1 for an unknown name.
 */
int ls_ring_layout(const char *name, uint64_t *offset);

/* What ls_ring_scan() found in the records it accepted. */
typedef struct ls_scan {
    uint64_t count;         /* records accepted */
    uint64_t payload;       /* their payload bytes */
    uint64_t last_seq;      /* sequence, flags and commit time of the last one */
    uint64_t last_time_ns;
    uint32_t last_flags;
    uint32_t reserved;
} ls_scan;

/*
 * Consumer side: check the records at the start of `buf` (`n` bytes copied
 * out of the data area).  Accepts one record after another while each is
 * plain: neither BUSY nor PAD, a size that is a multiple of 8, at least a
 * header and within `n`, a payload within the record, the sequence
 * `expect` (any sequence for the first record when `have_expect` is 0,
 * then each one more than the last) and an XXH3-64 equal to the header's.
 * Stops at the first record that is not, without judging it: the caller
 * looks at that one itself (ring.py's rules decide what is corrupt).
 * Returns the bytes accepted and fills *out (zeroed when none).
 */
uint64_t ls_ring_scan(const void *buf, uint64_t n, uint64_t expect, int have_expect, ls_scan *out);

#endif /* LIFTSHIFT_RING_H */
