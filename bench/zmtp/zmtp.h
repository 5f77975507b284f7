/*
 * The ZMTP 3.1 wire (RFC 23, RFC 37) as the prototype publisher needs it:
 * shared reference-counted message buffers that hold whole ZMTP frames, the
 * greeting, commands, and a parser for what a subscriber sends.
 *
 * A message from the collector is framed once into one struct msg; every
 * connection that wants it holds a reference, and its bytes go out from
 * there by writev, never copied per connection.
 */
#ifndef ZMTP_PROTO_H
#define ZMTP_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define ZMTP_GREETING_LEN 64
#define ZMTP_MORE 0x01
#define ZMTP_LONG 0x02
#define ZMTP_COMMAND 0x04
/* The largest frame a subscriber may send (a subscription, a command): more is a protocol error. */
#define ZMTP_MAX_IN_FRAME 65536

struct msg {
    uint32_t refs;
    uint32_t len;        /* framed bytes in data[] */
    uint32_t topic_off;  /* the first frame's body, what subscriptions are matched against */
    uint32_t topic_len;
    unsigned char data[];
};

struct msg *msg_new(size_t len);
static inline struct msg *msg_ref(struct msg *m) { m->refs++; return m; }
void msg_unref(struct msg *m);

/* Writes a frame header for a body of `size` bytes; returns its length (2 or 9). */
size_t zmtp_frame_header(unsigned char *out, int flags, uint64_t size);
/* Our greeting: ZMTP 3.1, NULL mechanism, as-server 0. */
void zmtp_greeting(unsigned char out[ZMTP_GREETING_LEN]);
/* 0 if g is a ZMTP 3.x greeting with the NULL mechanism; -1 otherwise. */
int zmtp_greeting_ok(const unsigned char *g);
/* A command frame: name, then `len` bytes of data, as one message buffer. */
struct msg *zmtp_command(const char *name, const void *data, size_t len);
/* READY with one property, Socket-Type = type. */
struct msg *zmtp_ready(const char *type);
/* ERROR with a reason. */
struct msg *zmtp_error(const char *reason);
/* The value of property `name` in a READY body's metadata, or NULL; *vlen set. Bounds-checked. */
const unsigned char *zmtp_property(const unsigned char *meta, size_t len, const char *name, size_t *vlen);

/* One parsed frame from a subscriber's byte stream. */
struct zmtp_frame {
    int flags;
    const unsigned char *body;
    size_t size;
};
/* Parses one frame at buf[0..avail): its total length (header + body) if whole, 0 if more bytes
 * are needed, -1 if the frame is larger than ZMTP_MAX_IN_FRAME. */
long zmtp_parse_frame(const unsigned char *buf, size_t avail, struct zmtp_frame *f);
/* For a command frame: the name (not NUL-terminated) and the data after it; -1 if malformed. */
int zmtp_command_split(const struct zmtp_frame *f, const unsigned char **name, size_t *nlen,
                       const unsigned char **data, size_t *dlen);

#endif
