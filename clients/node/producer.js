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

// Waiting for room at the high-water mark. zeromq.js decides whether a send must wait by libzmq's ZMQ_EVENTS,
// and an XPUB always reports itself writable (with XPUB_NODROP too), so zeromq.js never waits: sendTimeout is
// ignored and a send to a full queue fails at once with EAGAIN (the example used to exit 1 at its 1,001st
// message, discarding what was queued). So a refused send is retried every RETRY_MS, for at most SEND_WAIT_MS;
// then the run ends with exit 1 and the number of the message that was not sent.
const RETRY_MS = 5;
const SEND_WAIT_MS = 5000;

async function send(sock, message, n) {
  const deadline = Date.now() + SEND_WAIT_MS;
  for (;;) {
    try {
      await sock.send(message);
      return;
    } catch (err) {
      if (err.code !== "EAGAIN") fail(`send ${n} failed: ${err.message}`);
      if (Date.now() >= deadline) {
        fail(`send ${n} failed: the collector took nothing for ${SEND_WAIT_MS} ms (its queue is full; ` +
          `messages 1 to ${n - 1} were queued)`, 1);
      }
      await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
    }
  }
}

async function main() {
  const args = process.argv.slice(2);
  if (args.length < 3 || args.length > 4) fail("usage: node producer.js ENDPOINT TOPIC COUNT [PAYLOAD]");
  const [endpoint, topic, countText, payload = "message"] = args;
  const count = parseCount(countText, "COUNT", 0);
  const readyMs = parseCount(process.env.FANOUT_READY_TIMEOUT_MS ?? "10000", "FANOUT_READY_TIMEOUT_MS", 0);
  if (!topic || topic.includes(" ")) fail("TOPIC must be non-empty and without spaces (it ends at the first space)");

  const sock = new zmq.XPublisher({
    ...socketOptions(),
    noDrop: true, // at the high-water mark, refuse (EAGAIN) instead of dropping: send() below waits and retries
    sendTimeout: 0,
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
      await send(sock, `${topic} ${payload}-${n}`, n);
    }
  } finally {
    sock.close(); // queued messages are flushed at exit, for at most `linger` ms
  }
}

main().catch((err) => fail(`error: ${err.message}`));
