// node producer.js ENDPOINT TOPIC COUNT [PAYLOAD]
//
// Sends COUNT single-frame messages "TOPIC PAYLOAD-<n>" (n = 1..COUNT) to
// fanoutd's collector. It uses XPUB, not PUB: the collector is a bound SUB,
// and anything sent before its subscription has come back over the new
// connection is silently lost (the slow joiner). With verbosity "allSubs"
// (ZMQ_XPUB_VERBOSE) the XPUB receives that subscription as a message
// starting with byte 0x01, so the producer waits for it first
// (FANOUT_READY_TIMEOUT_MS, default 10000).
// Exit status: 0 sent, 1 collector not ready / send timed out, 2 usage or error.
"use strict";

const zmq = require("zeromq");
const { fail, parseCount, socketOptions } = require("./common");

async function main() {
  const args = process.argv.slice(2);
  if (args.length < 3 || args.length > 4) fail("usage: node producer.js ENDPOINT TOPIC COUNT [PAYLOAD]");
  const [endpoint, topic, countText, payload = "message"] = args;
  const count = parseCount(countText, "COUNT", 0);
  const readyMs = parseCount(process.env.FANOUT_READY_TIMEOUT_MS ?? "10000", "FANOUT_READY_TIMEOUT_MS", 0);
  if (!topic || topic.includes(" ")) fail("TOPIC must be non-empty and without spaces (it ends at the first space)");

  const sock = new zmq.XPublisher({
    ...socketOptions(),
    noDrop: true, // at the high-water mark, wait (up to sendTimeout) instead of dropping
    sendTimeout: 5000,
    receiveTimeout: readyMs,
  });
  sock.verbosity = "allSubs";
  try {
    sock.connect(endpoint);
    // Readiness: wait for the collector's subscription (first byte 0x01).
    for (;;) {
      const [sub] = await sock.receive().catch((err) => {
        if (err.code === "EAGAIN") fail(`no subscription from the collector at ${endpoint} within ${readyMs} ms`, 1);
        throw err;
      });
      if (sub.length > 0 && sub[0] === 1) break;
    }
    for (let n = 1; n <= count; n++) {
      await sock.send(`${topic} ${payload}-${n}`).catch((err) => {
        fail(`send ${n} failed: ${err.message}`, err.code === "EAGAIN" ? 1 : 2);
      });
    }
  } finally {
    sock.close(); // queued messages are flushed at exit, for at most `linger` ms
  }
}

main().catch((err) => fail(`error: ${err.message}`));
