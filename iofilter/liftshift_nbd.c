/* liftshift-nbd's fast path for plain WRITE requests; see liftshift_nbd.h. */
#define _GNU_SOURCE
#include "liftshift_nbd.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#define NBD_REQUEST_MAGIC 0x25609513u
#define NBD_SIMPLE_REPLY_MAGIC 0x67446698u
#define NBD_CMD_WRITE 1u

static inline uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint16_t be16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static inline uint64_t be64(const uint8_t *p)
{
    return (uint64_t)be32(p) << 32 | be32(p + 4);
}

/* Room for a write of len bytes: the same bound as Export.can_run_inline
 * (records with headers, twice for a PAD at the wrap, and a margin). */
static int ring_ready(const ls_ring_header *h, uint64_t len)
{
    if (__atomic_load_n(&h->throttle_bps, __ATOMIC_RELAXED) ||
        __atomic_load_n(&h->throttle_iops, __ATOMIC_RELAXED) ||
        __atomic_load_n(&h->freeze, __ATOMIC_ACQUIRE) || __atomic_load_n(&h->closed, __ATOMIC_ACQUIRE))
        return 0;
    uint64_t max_record = h->max_record ? h->max_record : 1;
    uint64_t need = 2 * (len + (len / max_record + 1) * LS_RING_RECORD_HEADER) + 64;
    uint64_t used = __atomic_load_n(&h->reserve, __ATOMIC_RELAXED) -
                    __atomic_load_n(&h->release, __ATOMIC_ACQUIRE);
    return used <= h->capacity && h->capacity - used >= need;
}

static int pwrite_all(int fd, const uint8_t *data, uint64_t len, uint64_t offset)
{
    while (len) {
        ssize_t n = pwrite(fd, data, len, (off_t)offset);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        if (n == 0)
            return EIO;
        data += n;
        len -= (uint64_t)n;
        offset += (uint64_t)n;
    }
    return 0;
}

uint64_t ls_nbd_serve_writes(ls_ring *ring, int fd, uint64_t disk_size, uint64_t max_len,
                             const uint8_t *buf, uint64_t n, uint8_t *out, uint64_t out_cap,
                             ls_nbd_batch *res)
{
    memset(res, 0, sizeof *res);
    const ls_ring_header *h = ring ? ls_ring_get_header(ring) : NULL;
    uint64_t pos = 0;
    while (n - pos >= LS_NBD_REQUEST_SIZE && out_cap - res->out >= LS_NBD_REPLY_SIZE) {
        const uint8_t *req = buf + pos;
        uint64_t offset = be64(req + 16);
        uint64_t len = be32(req + 24);
        if (be32(req) != NBD_REQUEST_MAGIC || be16(req + 4) != 0 || be16(req + 6) != NBD_CMD_WRITE ||
            len == 0 || len > max_len || n - pos - LS_NBD_REQUEST_SIZE < len ||
            offset > disk_size || len > disk_size - offset)
            break;
        if (h && !ring_ready(h, len))
            break;
        const uint8_t *data = req + LS_NBD_REQUEST_SIZE;
        int stage = LS_NBD_OK, code = 0;
        if (ring && (code = ls_ring_admit(ring, offset, len)) != LS_OK)
            stage = LS_NBD_ADMIT;
        else if ((code = pwrite_all(fd, data, len, offset)) != 0)
            stage = LS_NBD_PWRITE;
        else if (ring && (code = ls_ring_publish_write(ring, offset, data, len)) < 0)
            stage = LS_NBD_PUBLISH;
        /* LS_OVERFLOWED is success: the range is in the dirty bitmap. */
        pos += LS_NBD_REQUEST_SIZE + len;
        if (stage != LS_NBD_OK) {
            res->handle = be64(req + 8);
            res->offset = offset;
            res->length = len;
            res->stage = stage;
            res->code = code;
            break;
        }
        uint8_t *rep = out + res->out;
        static const uint8_t head[8] = {NBD_SIMPLE_REPLY_MAGIC >> 24, (NBD_SIMPLE_REPLY_MAGIC >> 16) & 0xff,
                                        (NBD_SIMPLE_REPLY_MAGIC >> 8) & 0xff, NBD_SIMPLE_REPLY_MAGIC & 0xff,
                                        0, 0, 0, 0}; /* magic, error 0 */
        memcpy(rep, head, 8);
        memcpy(rep + 8, req + 8, 8); /* the handle, opaque */
        res->out += LS_NBD_REPLY_SIZE;
        res->served++;
    }
    res->consumed = pos;
    return res->served;
}
