// node puller.js ENDPOINT COUNT TIMEOUT_MS
//
// Connects a PULL to fanoutd's push socket and prints each payload it is
// given on one line (fanoutd strips the topic: a single frame "topic data"
// arrives as "data", a multipart [topic, a, b] as frames a and b, printed
// "a b"). Messages are load-balanced: each goes to one puller only.
// Exits 0 after COUNT messages (0: never), 1 when none arrived for
// TIMEOUT_MS (-1: wait forever), 2 on errors.
"use strict";

const zmq = require("zeromq");
const { fail, parseCount, socketOptions, printMessage } = require("./common");

async function main() {
  const args = process.argv.slice(2);
  if (args.length !== 3) fail("usage: node puller.js ENDPOINT COUNT TIMEOUT_MS");
  const [endpoint, countText, timeoutText] = args;
  const count = parseCount(countText, "COUNT", 0);
  const timeoutMs = parseCount(timeoutText, "TIMEOUT_MS", -1);

  const sock = new zmq.Pull({ ...socketOptions(), receiveTimeout: timeoutMs });
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
