/*
 * Prints what fanoutd/dataplane/wire.h defines, for tests/test_wire.py to
 * hold against clients/fanoutd_client/wire.py.  wire.h comes first and
 * nothing else of fanoutd's is included, so a header that needs more than
 * the C library to compile fails here.
 *
 * Output: one line per constant, "NAME VALUE" (a number in decimal, a string
 * as "x" and its bytes in hex), then "end".  Input, one line per case:
 * "FRAMES HEX" (the first frame in hex, "-" for an empty one); each is
 * answered with "TOPIC_LEN KEY_LEN", from wire_topic_len and
 * wire_stream_key_len.
 */
#include "wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NUMBER(name) printf("%s %lld\n", #name, (long long)(name))
#define STRING(name) hex(#name, name, sizeof name - 1)

static void hex(const char *name, const char *data, size_t len)
{
    printf("%s x", name);
    for (size_t i = 0; i < len; i++)
        printf("%02x", (unsigned char)data[i]);
    putchar('\n');
}

static int unhex(const char *text, char *out, size_t *len)
{
    size_t n = strlen(text);
    *len = 0;
    if (strcmp(text, "-") == 0)
        return 0;
    if (n % 2 != 0)
        return -1;
    for (size_t i = 0; i < n; i += 2) {
        unsigned int byte;
        if (sscanf(text + i, "%2x", &byte) != 1)
            return -1;
        out[(*len)++] = (char)byte;
    }
    return 0;
}

int main(void)
{
    STRING(WIRE_MAGIC);
    NUMBER(WIRE_MAGIC_LEN);
    NUMBER(WIRE_VERSION);
    NUMBER(WIRE_HEAD_LEN);
    NUMBER(WIRE_STAMP);
    NUMBER(WIRE_ROUTE);
    NUMBER(WIRE_READY);
    NUMBER(WIRE_STAMP_LEN);
    NUMBER(WIRE_REPAIR_RANGE);
    NUMBER(WIRE_REPAIR_HEADS);
    NUMBER(WIRE_REPAIR_ANSWER);
    NUMBER(WIRE_REPAIR_END);
    NUMBER(WIRE_REPAIR_MORE);
    NUMBER(WIRE_REPAIR_LAST);
    NUMBER(WIRE_REPAIR_TAG_LEN);
    NUMBER(WIRE_REPAIR_RANGE_LEN);
    NUMBER(WIRE_REPAIR_RUN_LEN);
    NUMBER(WIRE_REPAIR_REQUEST_MAX);
    NUMBER(WIRE_GONE_EVICTED);
    NUMBER(WIRE_GONE_EPOCH);
    NUMBER(WIRE_GONE_UNKNOWN);
    NUMBER(WIRE_GONE_LIMIT);
    NUMBER(WIRE_GONE_FUTURE);
    NUMBER(WIRE_NODE_ID_LEN);
    NUMBER(WIRE_MAX_HOPS);
    NUMBER(WIRE_STREAM_KEY_CAP);
    NUMBER(WIRE_OUTPUT_FRAME_MAX);
    NUMBER(WIRE_LONGEST_PREFIX);
    STRING(WIRE_DRAIN_TOPIC);
    STRING(WIRE_RELAY_PROPERTY);
    STRING(WIRE_RELAY_PROPERTY_VALUE);
    puts("end");

    static char line[1 << 16], text[1 << 16], frame[1 << 15];
    while (fgets(line, sizeof line, stdin)) {
        int frames;
        size_t len;
        if (sscanf(line, "%d %s", &frames, text) != 2 || unhex(text, frame, &len) < 0) {
            fprintf(stderr, "wire_probe: cannot read the case %s", line);
            return 2;
        }
        printf("%zu %zu\n", wire_topic_len(frame, len), wire_stream_key_len(frame, len, frames));
    }
    return 0;
}
