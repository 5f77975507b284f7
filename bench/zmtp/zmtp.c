/* The ZMTP 3.1 wire for the prototype publisher: see zmtp.h. Written from RFC 23 and RFC 37. */
#include "zmtp.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct msg *msg_new(size_t len)
{
    struct msg *m = malloc(sizeof *m + len);
    if (!m)
        abort(); /* a prototype: out of memory ends it */
    m->refs = 1;
    m->len = (uint32_t)len;
    m->topic_off = m->topic_len = 0;
    return m;
}

void msg_unref(struct msg *m)
{
    if (--m->refs == 0)
        free(m);
}

size_t zmtp_frame_header(unsigned char *out, int flags, uint64_t size)
{
    if (size <= 255) {
        out[0] = (unsigned char)flags;
        out[1] = (unsigned char)size;
        return 2;
    }
    out[0] = (unsigned char)(flags | ZMTP_LONG);
    for (int i = 0; i < 8; i++)
        out[1 + i] = (unsigned char)(size >> (56 - 8 * i));
    return 9;
}

void zmtp_greeting(unsigned char out[ZMTP_GREETING_LEN])
{
    memset(out, 0, ZMTP_GREETING_LEN);
    out[0] = 0xFF;          /* signature: 0xFF, 8 bytes padding, 0x7F */
    out[9] = 0x7F;
    out[10] = 3;            /* version 3.1 */
    out[11] = 1;
    memcpy(out + 12, "NULL", 4); /* mechanism, 20 bytes zero-padded; as-server (32) 0; filler */
}

int zmtp_greeting_ok(const unsigned char *g)
{
    static const unsigned char null_mech[20] = "NULL";
    if (g[0] != 0xFF || g[9] != 0x7F || g[10] < 3)
        return -1;
    return memcmp(g + 12, null_mech, 20) == 0 ? 0 : -1;
}

struct msg *zmtp_command(const char *name, const void *data, size_t len)
{
    size_t nlen = strlen(name), body = 1 + nlen + len;
    unsigned char head[9];
    size_t hlen = zmtp_frame_header(head, ZMTP_COMMAND, body);
    struct msg *m = msg_new(hlen + body);
    memcpy(m->data, head, hlen);
    m->data[hlen] = (unsigned char)nlen;
    memcpy(m->data + hlen + 1, name, nlen);
    if (len)
        memcpy(m->data + hlen + 1 + nlen, data, len);
    return m;
}

struct msg *zmtp_ready(const char *type)
{
    unsigned char meta[64];
    size_t tlen = strlen(type), i = 0;
    meta[i++] = 11;
    memcpy(meta + i, "Socket-Type", 11), i += 11;
    meta[i++] = 0, meta[i++] = 0, meta[i++] = 0, meta[i++] = (unsigned char)tlen;
    memcpy(meta + i, type, tlen), i += tlen;
    return zmtp_command("READY", meta, i);
}

struct msg *zmtp_error(const char *reason)
{
    unsigned char data[256];
    size_t n = strlen(reason) > 255 ? 255 : strlen(reason);
    data[0] = (unsigned char)n;
    memcpy(data + 1, reason, n);
    return zmtp_command("ERROR", data, n + 1);
}

const unsigned char *zmtp_property(const unsigned char *meta, size_t len, const char *name, size_t *vlen)
{
    size_t want = strlen(name), i = 0;
    while (i < len) {
        size_t n = meta[i++];
        if (i + n + 4 > len)
            return NULL;
        const unsigned char *pname = meta + i;
        i += n;
        size_t v = (size_t)meta[i] << 24 | (size_t)meta[i + 1] << 16 | (size_t)meta[i + 2] << 8 | meta[i + 3];
        i += 4;
        if (v > len - i)
            return NULL;
        if (n == want && strncasecmp((const char *)pname, name, n) == 0) {
            *vlen = v;
            return meta + i;
        }
        i += v;
    }
    return NULL;
}

long zmtp_parse_frame(const unsigned char *buf, size_t avail, struct zmtp_frame *f)
{
    if (avail < 2)
        return 0;
    int flags = buf[0];
    size_t hlen = flags & ZMTP_LONG ? 9 : 2;
    if (avail < hlen)
        return 0;
    uint64_t size = 0;
    if (flags & ZMTP_LONG)
        for (int i = 0; i < 8; i++)
            size = size << 8 | buf[1 + i];
    else
        size = buf[1];
    if (size > ZMTP_MAX_IN_FRAME)
        return -1;
    if (avail < hlen + size)
        return 0;
    f->flags = flags;
    f->body = buf + hlen;
    f->size = (size_t)size;
    return (long)(hlen + size);
}

int zmtp_command_split(const struct zmtp_frame *f, const unsigned char **name, size_t *nlen,
                       const unsigned char **data, size_t *dlen)
{
    if (f->size < 1 || (size_t)f->body[0] + 1 > f->size)
        return -1;
    *nlen = f->body[0];
    *name = f->body + 1;
    *data = f->body + 1 + *nlen;
    *dlen = f->size - 1 - *nlen;
    return 0;
}
