/* liftshift-nbd's fast path: plain NBD WRITE requests served in C.
 *
 * liftshift-nbd (iofilter/nbd.py) is an asyncio server.  Under a guest's
 * stream of small writes its Python cost per request (parse the header, read
 * the payload, admit, pwrite, publish, queue the reply) is larger than the
 * write itself, so the server hands every run of *plain* writes it has
 * received to ls_nbd_serve_writes() in one call: the same steps in the same
 * order (admit -> pwrite -> publish -> reply), for as many requests as the
 * buffer holds, leaving everything else to Python.
 *
 * A request is served here only when nothing can make it wait or refuse it:
 * request magic, NBD_CMD_WRITE, no command flags (no FUA), 1..max_len bytes,
 * its payload wholly in the buffer, inside the disk, room for its 16-byte
 * reply, and, with a ring, no throttle word set, freeze and closed clear and
 * room in the ring for its records (only this process produces, so that room
 * cannot shrink before it is published).  The first request that is not
 * stops the call, unconsumed, and the caller handles it its usual way.
 *
 * Races the checks cannot exclude (the daemon sets freeze or CLOSE between
 * the check and ls_ring_admit; a pwrite or publish fails) consume the request
 * and stop with its handle, the step and the code, so that the caller answers
 * it with the error it maps every other failure with.
 */
#ifndef LIFTSHIFT_NBD_H
#define LIFTSHIFT_NBD_H

#include <stdint.h>

#include "liftshift_ring.h"

#define LS_NBD_REQUEST_SIZE 28u
#define LS_NBD_REPLY_SIZE 16u

/* Where a consumed request failed (ls_nbd_batch.stage). */
#define LS_NBD_OK 0      /* nothing failed: stopped at a request left to the caller, or at the end */
#define LS_NBD_ADMIT 1   /* ls_ring_admit refused it (code: LS_E*); nothing was written */
#define LS_NBD_PWRITE 2  /* pwrite failed (code: errno); the image may hold part of it, the ring none */
#define LS_NBD_PUBLISH 3 /* the image holds it, the ring refused it (code: LS_E*) */

typedef struct ls_nbd_batch {
    uint64_t consumed; /* input bytes used: the served requests, and the failed one if stage != 0 */
    uint64_t out;      /* reply bytes written (LS_NBD_REPLY_SIZE per served request) */
    uint64_t served;   /* requests served (answered with success in the output) */
    uint64_t handle;   /* the failed request's handle, big-endian as sent (stage != 0) */
    uint64_t offset;   /* its offset */
    uint64_t length;   /* its length */
    int32_t stage;     /* LS_NBD_* */
    int32_t code;      /* see stage */
} ls_nbd_batch;

/* Serve the plain WRITE requests at the start of buf[0, n) into the image
 * open at fd (disk_size bytes) and, unless ring is NULL, publish each into
 * the ring; write their simple replies into out[0, out_cap).  Always fills
 * *res; returns res->served. */
uint64_t ls_nbd_serve_writes(ls_ring *ring, int fd, uint64_t disk_size, uint64_t max_len,
                             const uint8_t *buf, uint64_t n, uint8_t *out, uint64_t out_cap,
                             ls_nbd_batch *res);

#endif
