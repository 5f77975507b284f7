// What the examples share: argument checks and the socket options every
// fanoutd client should set (heartbeats, bounded linger, optional CURVE
// keys from the environment).
"use strict";

const HEARTBEAT_IVL_MS = 30000; // fanoutd's own interval ...
const HEARTBEAT_TIMEOUT_MS = 15000; // ... and timeout
const HEARTBEAT_TTL_MS = 0; // fanoutd times clients out itself (see clients/README.md)

function fail(message, status = 2) {
  process.stderr.write(`${message}\n`);
  process.exit(status);
}

// A whole number >= min, or exit 2 naming the argument.
function parseCount(text, name, min) {
  const value = Number(text);
  if (text === undefined || !/^-?\d+$/.test(text) || value < min) {
    fail(`bad ${name} '${text}': expected a whole number >= ${min}`);
  }
  return value;
}

// Options for new zmq.<Socket>(options). CURVE is used when
// FANOUT_SERVER_KEY is set (40-character Z85 strings, as in the key files
// `fanoutd keygen` writes); the client's own pair must be set then too.
function socketOptions() {
  const options = {
    heartbeatInterval: HEARTBEAT_IVL_MS,
    heartbeatTimeout: HEARTBEAT_TIMEOUT_MS,
    heartbeatTimeToLive: HEARTBEAT_TTL_MS,
    linger: 2000, // close() flushes for at most this long
    ipv6: true, // tcp://[::1]:5560 and names that resolve to IPv6 work too
  };
  const { FANOUT_SERVER_KEY: server, FANOUT_PUBLIC_KEY: pub, FANOUT_SECRET_KEY: secret } = process.env;
  if (server) {
    if (!pub || !secret) fail("FANOUT_SERVER_KEY needs FANOUT_PUBLIC_KEY and FANOUT_SECRET_KEY");
    for (const key of [server, pub, secret]) {
      if (key.length !== 40) fail("CURVE keys must be 40-character Z85 strings");
    }
    Object.assign(options, { curveServerKey: server, curvePublicKey: pub, curveSecretKey: secret });
  }
  return options;
}

// Print a message's frames on one line, separated by spaces.
function printMessage(frames) {
  const parts = frames.flatMap((frame, i) => (i === 0 ? [frame] : [Buffer.from(" "), frame]));
  process.stdout.write(Buffer.concat([...parts, Buffer.from("\n")]));
}

module.exports = { fail, parseCount, socketOptions, printMessage };
