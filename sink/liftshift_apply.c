/*
 * liftshift_apply.c - the sink's fast path for LiveRecords frames.
 *
 * Why: in Python, checking and applying a frame of 4 KiB ring records costs
 * ~20 us of CPU per record (a LiveRecord object, a memoryview, a pwrite call
 * and the interpreter around each), which caps live replication well below
 * 100,000 records/s.  Here the same two passes cost about the XXH3 and the
 * system call, and run without the GIL (ctypes drops it), so the event loop
 * keeps receiving while a frame is applied.
 *
 * Contract (sink/capply.py is the only caller; sink/records.py is the
 * reference the tests hold this file to):
 *   ls_frame_check() accepts exactly the frames parse_records() accepts and
 *   reports the same summary; on any problem it only says "refused" (and
 *   where), and the caller re-runs the Python parser, which raises the typed
 *   error naming the problem.  So the error messages live in one place.
 *   ls_frame_write() writes a frame that ls_frame_check() accepted: every
 *   WRITE record with seq > after_seq, contiguous runs coalesced into one
 *   pwritev, stopping at the first fresh record that is not a WRITE (the
 *   caller applies ZERO / TRIM / CLOSE / VOID itself and calls again).
 *
 * Record layout: iofilter/liftshift_ring.h (ls_record_header).  FLAG_VOID
 * is the daemon's marker for a record whose payload failed its checksum in
 * the ring (iofilter/ring.py FLAG_VOID); it never appears in a ring, so the
 * producer's header does not define it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>
#include <xxhash.h>

#include "../iofilter/liftshift_ring.h"

#define LS_FLAG_VOID 16u
#define LS_APPLY_IOV_MAX 1024
#define LS_KNOWN_WORD_BITS (LS_WORD_LEN_MASK | LS_WORD_PAD | LS_WORD_BUSY)

/* Why ls_frame_check() refused a frame (the caller re-parses in Python for
 * the message; the code is for tests and logs). */
enum {
    LS_CHECK_OK = 0,
    LS_CHECK_MALFORMED = 1,   /* layout: InvalidArgument in records.py */
    LS_CHECK_RANGE = 2,       /* OutOfRange */
    LS_CHECK_CHECKSUM = 3,    /* ChecksumMismatch */
};

/* What a checked frame holds (records.py: the list parse_records returns). */
typedef struct ls_frame_summary {
    uint64_t first_seq;       /* 0 when the frame has no records */
    uint64_t last_seq;
    uint64_t count;           /* records other than PAD */
    uint64_t inner_close_seq; /* seq of the first CLOSE that is not the last record, else 0 */
    uint64_t error_at;        /* byte offset of the refused record */
} ls_frame_summary;

/* ABI version of this file's functions and structs, checked by capply.py. */
int ls_apply_abi(void) { return 2; }

static uint64_t load64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static int is_kind(uint32_t flags) {
    return flags == LS_FLAG_WRITE || flags == LS_FLAG_ZERO || flags == LS_FLAG_TRIM || flags == LS_FLAG_CLOSE ||
           flags == LS_FLAG_VOID;
}

/* The rules of records.py _slow_record(), in its order, for one record at
 * `o`.  Returns LS_CHECK_* and sets *size; *rec is NULL for a PAD record. */
static int check_record(const uint8_t *buf, uint64_t n, uint64_t o, int have_expect, uint64_t expect,
                        uint64_t disk_size,
                        ls_record_header *rec, int *is_pad, uint64_t *size) {
    if (n - o < 8)
        return LS_CHECK_MALFORMED;
    uint64_t word = load64(buf + o);
    uint64_t sz = word & LS_WORD_LEN_MASK;
    if (word & ~(uint64_t)LS_KNOWN_WORD_BITS)
        return LS_CHECK_MALFORMED;
    if (word & LS_WORD_BUSY)
        return LS_CHECK_MALFORMED;
    if (sz < 8 || (sz & 7))
        return LS_CHECK_MALFORMED;
    if (sz > n - o)
        return LS_CHECK_MALFORMED;
    *size = sz;
    if (word & LS_WORD_PAD) {
        *is_pad = 1;
        return LS_CHECK_OK;
    }
    *is_pad = 0;
    if (sz < LS_RING_RECORD_HEADER)
        return LS_CHECK_MALFORMED;
    memcpy(rec, buf + o, sizeof *rec);
    uint64_t want = LS_RING_RECORD_HEADER + (((uint64_t)rec->paylen + 7) & ~(uint64_t)7);
    if (sz != want && rec->flags != LS_FLAG_VOID)
        return LS_CHECK_MALFORMED;
    if (!is_kind(rec->flags))
        return LS_CHECK_MALFORMED;
    if (rec->seq == 0)
        return LS_CHECK_MALFORMED;
    /* have_expect, not expect != 0: after seq UINT64_MAX the next expected
     * sequence wraps to 0, and no record may follow (records.py agrees). */
    if (have_expect && rec->seq != expect)
        return LS_CHECK_MALFORMED;
    if (rec->flags == LS_FLAG_WRITE) {
        if (rec->paylen != rec->length || rec->length == 0)
            return LS_CHECK_MALFORMED;
    } else if (rec->paylen) {
        return LS_CHECK_MALFORMED;
    } else if (rec->flags == LS_FLAG_CLOSE) {
        if (rec->length)
            return LS_CHECK_MALFORMED;
    } else if (rec->flags == LS_FLAG_VOID) {
        return LS_CHECK_OK; /* keeps only its sequence: no range, no checksum */
    } else if (rec->length == 0) {
        return LS_CHECK_MALFORMED;
    }
    /* offset + length > disk_size, without overflowing 64 bits. */
    if (rec->length > disk_size || rec->offset > disk_size - rec->length)
        return LS_CHECK_RANGE;
    if (XXH3_64bits(buf + o + LS_RING_RECORD_HEADER, rec->paylen) != rec->xxh3)
        return LS_CHECK_CHECKSUM;
    return LS_CHECK_OK;
}

/*
 * Check every record of buf[0, n) as records.parse_records() does.  Returns
 * LS_CHECK_OK and fills *out, or the kind of the first problem (out->error_at
 * names the record).
 */
int ls_frame_check(const uint8_t *buf, uint64_t n, uint64_t disk_size, ls_frame_summary *out) {
    memset(out, 0, sizeof *out);
    uint64_t expect = 0, o = 0, last_close = 0;
    while (o < n) {
        ls_record_header rec;
        int pad = 0;
        uint64_t size = 0;
        int rc = check_record(buf, n, o, out->count > 0, expect, disk_size, &rec, &pad, &size);
        if (rc != LS_CHECK_OK) {
            out->error_at = o;
            return rc;
        }
        o += size;
        if (pad)
            continue;
        if (out->count == 0)
            out->first_seq = rec.seq;
        /* A CLOSE followed by any record is an error the caller reports. */
        if (last_close && !out->inner_close_seq)
            out->inner_close_seq = last_close;
        last_close = rec.flags == LS_FLAG_CLOSE ? rec.seq : 0;
        out->last_seq = rec.seq;
        out->count++;
        expect = rec.seq + 1;
    }
    return LS_CHECK_OK;
}

/* pwritev all of iov[0, cnt) at `offset`, retrying short writes. */
static int write_all(int fd, struct iovec *iov, int cnt, uint64_t offset) {
    while (cnt > 0) {
        ssize_t w = pwritev(fd, iov, cnt, (off_t)offset);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (w == 0)
            return -EIO;
        offset += (uint64_t)w;
        while (cnt > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            cnt--;
        }
        if (cnt > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

/*
 * Write the fresh WRITE records of a checked frame, starting at byte *pos:
 * records with seq <= after_seq are skipped; each run of WRITEs contiguous on
 * the disk goes down in one pwritev (in groups of LS_APPLY_IOV_MAX), and
 * *applied_seq is advanced after each run.  Stops at the end of the frame
 * (*pos == n) or at a fresh record that is not a WRITE (*pos at it).  Adds
 * the bytes written to *written.  Returns 0 or -errno (a failed run is not
 * counted in *applied_seq; earlier runs are).
 */
int ls_frame_write(int fd, const uint8_t *buf, uint64_t n, uint64_t after_seq, uint64_t *pos,
                   uint64_t *applied_seq, uint64_t *written) {
    struct iovec iov[LS_APPLY_IOV_MAX];
    int cnt = 0;
    uint64_t run_start = 0, run_end = 0, run_last = 0;
    uint64_t o = *pos;
    int rc = 0;
    while (o < n) {
        uint64_t word = load64(buf + o);
        uint64_t size = word & LS_WORD_LEN_MASK;
        if (size < 8 || size > n - o) {
            rc = -EINVAL; /* not a checked frame */
            break;
        }
        if (word & LS_WORD_PAD) {
            o += size;
            continue;
        }
        ls_record_header rec;
        memcpy(&rec, buf + o, sizeof rec);
        if (rec.seq <= after_seq) {
            o += size;
            continue;
        }
        if (rec.flags != LS_FLAG_WRITE)
            break;
        if (cnt > 0 && (rec.offset != run_end || cnt == LS_APPLY_IOV_MAX)) {
            if (rec.offset != run_end) {
                /* The run ends here: write it and account for it. */
                rc = write_all(fd, iov, cnt, run_start);
                if (rc)
                    break;
                *written += run_end - run_start;
                *applied_seq = run_last;
                cnt = 0;
            } else {
                /* Same run, full iovec: write this group and go on. */
                rc = write_all(fd, iov, cnt, run_start);
                if (rc)
                    break;
                *written += run_end - run_start;
                run_start = run_end;
                cnt = 0;
                iov[cnt].iov_base = (void *)(buf + o + LS_RING_RECORD_HEADER);
                iov[cnt].iov_len = rec.length;
                cnt++;
                run_end += rec.length;
                run_last = rec.seq;
                o += size;
                continue;
            }
        }
        if (cnt == 0)
            run_start = run_end = rec.offset;
        iov[cnt].iov_base = (void *)(buf + o + LS_RING_RECORD_HEADER);
        iov[cnt].iov_len = rec.length;
        cnt++;
        run_end += rec.length;
        run_last = rec.seq;
        o += size;
    }
    if (rc == 0 && cnt > 0) {
        rc = write_all(fd, iov, cnt, run_start);
        if (rc == 0) {
            *written += run_end - run_start;
            *applied_seq = run_last;
        }
    }
    *pos = o;
    return rc;
}

/*
 * ls_frame_check() and, when the frame is accepted and its summary is
 * exactly (first_seq, last_seq, count) with no CLOSE before its last
 * record, ls_frame_write() from byte 0: one call, so a worker thread takes
 * the GIL back once per frame instead of once per step.  Returns
 * LS_CHECK_* (nothing written unless LS_CHECK_OK; LS_CHECK_SUMMARY when
 * only the summary disagreed) and sets *write_rc to ls_frame_write()'s
 * result.
 */
#define LS_CHECK_SUMMARY 4
int ls_frame_apply(int fd, const uint8_t *buf, uint64_t n, uint64_t disk_size, uint64_t first_seq,
                   uint64_t last_seq, uint64_t count, uint64_t after_seq, ls_frame_summary *out, uint64_t *pos,
                   uint64_t *applied_seq, uint64_t *written, int *write_rc) {
    *write_rc = 0;
    int rc = ls_frame_check(buf, n, disk_size, out);
    if (rc != LS_CHECK_OK)
        return rc;
    if (out->count == 0 || out->first_seq != first_seq || out->last_seq != last_seq || out->count != count ||
        out->inner_close_seq)
        return LS_CHECK_SUMMARY;
    *pos = 0;
    *write_rc = ls_frame_write(fd, buf, n, after_seq, pos, applied_seq, written);
    return LS_CHECK_OK;
}
