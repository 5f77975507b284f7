// node subscriber.js ENDPOINT PREFIX COUNT TIMEOUT_MS [stamped]
//
// Connects a SUB to fanoutd's publish socket, subscribes to PREFIX (a topic
// prefix; "" for everything) and prints each message on one line (frames
// separated by spaces). Exits 0 after COUNT messages (0: never), 1 when no
// message arrived for TIMEOUT_MS (-1: wait forever), 2 on errors.
//
// With "stamped" (for fanoutd's stamped output) each message's last frame is
// its sequence stamp (clients/README.md, "Sequence stamps"): it is checked,
// not printed, and gaps are counted per stream; "lost N restarts R resets S"
// goes to stderr at exit.
"use strict";

const zmq = require("zeromq");
const { fail, parseCount, socketOptions, printMessage } = require("./common");

// The trailer's bytes, spelled out here as each language's client does; the layout is
// clients/README.md, "Trailing frame".
const MAGIC = Buffer.from([0, 0x46, 0x44, 0x54]); // "\0FDT"
const READY = Buffer.from([0, 0x46, 0x44, 0x54, 1, 4]); // a trailer flagged READY alone

// Gap counting per stream, as clients/README.md describes it.
class Gaps {
  constructor(prefix) {
    this.prefix = Buffer.from(prefix);
    this.streams = new Map(); // key (hex) -> { epoch, id, seq }
    this.lost = 0n;
    this.restarts = 0;
    this.resets = 0;
    this.lastEpoch = null;
  }

  observe(first, trailer) {
    if (trailer.length < 32 || !trailer.subarray(0, 4).equals(MAGIC) || trailer[4] !== 1 || !(trailer[5] & 1)) {
      fail("not a stamped message: is this fanoutd's stamped output?");
    }
    const epoch = trailer.readBigUInt64BE(6);
    const id = trailer.readBigUInt64BE(14);
    const seq = trailer.readBigUInt64BE(22);
    const keyLength = trailer.readUInt16BE(30);
    const key = first.subarray(0, keyLength);
    // Only a stream the subscription covers whole can be checked.
    if (key.length < keyLength || this.prefix.length > keyLength || !key.subarray(0, this.prefix.length).equals(this.prefix)) {
      return;
    }
    if (this.lastEpoch !== null && epoch !== this.lastEpoch) this.restarts += 1;
    this.lastEpoch = epoch;
    const last = this.streams.get(key.toString("hex"));
    if (last && last.epoch === epoch) {
      if (last.id !== id) {
        this.resets += 1;
        this.lost += seq - 1n;
      } else if (seq > last.seq + 1n) {
        this.lost += seq - last.seq - 1n;
      }
    }
    this.streams.set(key.toString("hex"), { epoch, id, seq });
  }
}

async function main() {
  const args = process.argv.slice(2);
  if (!(args.length === 4 || (args.length === 5 && args[4] === "stamped"))) {
    fail("usage: node subscriber.js ENDPOINT PREFIX COUNT TIMEOUT_MS [stamped]");
  }
  const [endpoint, prefix, countText, timeoutText] = args;
  const count = parseCount(countText, "COUNT", 0);
  const timeoutMs = parseCount(timeoutText, "TIMEOUT_MS", -1);
  const gaps = args.length === 5 ? new Gaps(prefix) : null;

  const sock = new zmq.Subscriber({ ...socketOptions(), receiveTimeout: timeoutMs });
  sock.subscribe(prefix);
  sock.connect(endpoint);
  try {
    for (let got = 0; count === 0 || got < count; got++) {
      const frames = await sock.receive().catch((err) => {
        if (err.code === "EAGAIN") fail(`timeout: no message for ${timeoutMs} ms (${got} received)`, 1);
        throw err;
      });
      if (gaps) {
        if (frames.length < 2) fail("a message of one frame has no stamp: is this fanoutd's stamped output?");
        if (frames.length === 2 && frames[1].equals(READY)) {
          got -= 1; // the broker confirming the subscription: control, not a message
          continue;
        }
        gaps.observe(frames[0], frames[frames.length - 1]);
        printMessage(frames.slice(0, -1));
      } else {
        printMessage(frames);
      }
    }
  } finally {
    sock.close();
    if (gaps) process.stderr.write(`lost ${gaps.lost} restarts ${gaps.restarts} resets ${gaps.resets}\n`);
  }
}

main().catch((err) => fail(`error: ${err.message}`));
