/*
 * fanoutd/dataplane/trailer.c: the trailer codec, building and parsing the
 * trailer frame of wire.h (stamp, route, hello, READY).
 *
 * Part of the _forward.c translation unit (included there, not compiled alone).
 */

typedef struct { int flags; stamp_t stamp; const unsigned char *ids; int hops; } trailer_t;

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* Start a trailer frame of len bytes in out with its head (magic, version,
 * flags); returns where the body goes, or NULL (out left closed). */
static unsigned char *trailer_head(zmsg_t *out, size_t len, int flags)
{
    if (Z.msg_init_size(out, len) < 0)
        return NULL;
    unsigned char *p = Z.msg_data(out);
    memcpy(p, WIRE_MAGIC, 4);
    p[4] = WIRE_VERSION;
    p[5] = (unsigned char)flags;
    return p + WIRE_HEAD_LEN;
}

/* A trailer frame in out: the stamp, and a route of ids[0..hops) then this
 * node when route is set.  -1 on failure (out left closed). */
static int make_trailer(Forwarder *f, zmsg_t *out, const stamp_t *s, int route, const unsigned char *ids, int hops)
{
    size_t len = WIRE_HEAD_LEN + WIRE_STAMP_LEN + (route ? 1 + (size_t)(hops + 1) * WIRE_NODE_ID_LEN : 0);
    unsigned char *p = trailer_head(out, len, WIRE_STAMP | (route ? WIRE_ROUTE : 0));
    if (!p)
        return -1;
    put_u64(p, s->epoch);
    put_u64(p + 8, s->stream);
    put_u64(p + 16, s->seq);
    p[24] = (unsigned char)(s->keylen >> 8);
    p[25] = (unsigned char)s->keylen;
    p += WIRE_STAMP_LEN;
    if (route) {
        *p++ = (unsigned char)(hops + 1);
        if (hops)
            memcpy(p, ids, (size_t)hops * WIRE_NODE_ID_LEN);
        memcpy(p + (size_t)hops * WIRE_NODE_ID_LEN, f->node_id, WIRE_NODE_ID_LEN);
    }
    return 0;
}

/* Parse a trailer frame: 0 and *t filled, or -1 if m is not one. */
static int parse_trailer(zmsg_t *m, trailer_t *t)
{
    const unsigned char *d = Z.msg_data(m);
    size_t len = Z.msg_size(m), off = WIRE_HEAD_LEN;
    if (len < WIRE_HEAD_LEN || memcmp(d, WIRE_MAGIC, 4) != 0 || d[4] != WIRE_VERSION)
        return -1;
    t->flags = d[5];
    if (t->flags & ~(WIRE_STAMP | WIRE_ROUTE))
        return -1;
    if (t->flags & WIRE_STAMP) {
        if (len < off + WIRE_STAMP_LEN)
            return -1;
        t->stamp.epoch = get_u64(d + off);
        t->stamp.stream = get_u64(d + off + 8);
        t->stamp.seq = get_u64(d + off + 16);
        t->stamp.keylen = (uint16_t)(d[off + 24] << 8 | d[off + 25]);
        off += WIRE_STAMP_LEN;
    }
    t->ids = NULL;
    t->hops = 0;
    if (t->flags & WIRE_ROUTE) {
        if (len < off + 1)
            return -1;
        t->hops = d[off++];
        if (t->hops < 1 || t->hops > WIRE_MAX_HOPS || len - off < (size_t)t->hops * WIRE_NODE_ID_LEN)
            return -1;
        t->ids = d + off;
        off += (size_t)t->hops * WIRE_NODE_ID_LEN;
    }
    return off == len ? 0 : -1;
}

/* A relay's hello (its welcome message to a new link): one frame, a trailer without stamp or route. */
static int is_hello(Forwarder *f, int n)
{
    trailer_t t;
    return n == 1 && parse_trailer(&f->parts[0], &t) == 0 && t.flags == 0;
}

/* On the stamped output, answer a subscription with a control message: its
 * prefix as the first frame and a trailer flagged READY. libzmq applied the
 * subscription before handing it up, so the subscriber that sent it receives
 * this: it now knows messages of that prefix reach it (the readiness a plain
 * SUB can never have). Others matching the prefix skip it as control, and
 * plain publish subscribers never see it. Best effort: a full subscriber
 * refusing it (EAGAIN) only delays the new one's readiness. */
static int answer_subscription(void *sock, zmsg_t *sub)
{
    const unsigned char *d = Z.msg_data(sub);
    size_t len = Z.msg_size(sub);
    if (len < 1 || d[0] != 1)
        return 0;  /* an unsubscription */
    zmsg_t parts[2] ZMSG_LINE;  /* the prefix, then the trailer: control, not counted as held bytes */
    if (Z.msg_init_size(&parts[0], len - 1) < 0)
        return -1;
    memcpy(Z.msg_data(&parts[0]), d + 1, len - 1);
    if (!trailer_head(&parts[1], WIRE_HEAD_LEN, WIRE_READY)) {
        Z.msg_close(&parts[0]);
        return -1;
    }
    int rc = offer(sock, parts, 2);
    int err = rc < 0 ? Z.errno_() : 0;
    Z.msg_close(&parts[0]);  /* empty once queued */
    Z.msg_close(&parts[1]);
    return rc < 0 && err != EAGAIN ? -1 : 0;
}
