// node subscriber.js ENDPOINT PREFIX COUNT TIMEOUT_MS
//
// Connects a SUB to fanoutd's publish socket, subscribes to PREFIX (a topic
// prefix; "" for everything) and prints each message on one line (frames
// separated by spaces). Exits 0 after COUNT messages (0: never), 1 when no
// message arrived for TIMEOUT_MS (-1: wait forever), 2 on errors.
"use strict";

const zmq = require("zeromq");
const { fail, parseCount, socketOptions, printMessage } = require("./common");

async function main() {
  const args = process.argv.slice(2);
  if (args.length !== 4) fail("usage: node subscriber.js ENDPOINT PREFIX COUNT TIMEOUT_MS");
  const [endpoint, prefix, countText, timeoutText] = args;
  const count = parseCount(countText, "COUNT", 0);
  const timeoutMs = parseCount(timeoutText, "TIMEOUT_MS", -1);

  const sock = new zmq.Subscriber({ ...socketOptions(), receiveTimeout: timeoutMs });
  sock.subscribe(prefix);
  sock.connect(endpoint);
  try {
    for (let got = 0; count === 0 || got < count; got++) {
      const frames = await sock.receive().catch((err) => {
        if (err.code === "EAGAIN") fail(`timeout: no message for ${timeoutMs} ms (${got} received)`, 1);
        throw err;
      });
      printMessage(frames);
    }
  } finally {
    sock.close();
  }
}

main().catch((err) => fail(`error: ${err.message}`));
