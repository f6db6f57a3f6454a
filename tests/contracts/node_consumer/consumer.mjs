// Reads the EVENTS stream from the start and validates every event against the exported JSON
// Schema: the proof that a consumer in another language can join with the contracts alone.
//
//   NATS_URL (default nats://127.0.0.1:4222), NATS_USER and NATS_PASSWORD (when the bus needs
//   them), STREAM (default EVENTS), SCHEMA (default common/contracts/events.schema.json).
//
// Prints one JSON summary line; exits 0 when every event was valid, 1 on any mismatch, 2 when
// it saw no event or could not read the stream.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";
import { connect } from "nats";

const REPO = fileURLToPath(new URL("../../../", import.meta.url));
const STREAM = process.env.STREAM ?? "EVENTS";
const SCHEMA = process.env.SCHEMA ?? `${REPO}common/contracts/events.schema.json`;
// Caught up is "nothing pending"; this only bounds the wait should the stream shrink meanwhile.
const IDLE_MS = 10_000;

const ajv = new Ajv2020({ strict: true, allErrors: true });
addFormats(ajv);
const validEnvelope = ajv.compile(JSON.parse(readFileSync(SCHEMA, "utf8")));

// Problems with one message, as sentences; none when it keeps the contract.
function check(msg) {
  let envelope;
  try {
    envelope = JSON.parse(new TextDecoder().decode(msg.data));
  } catch (error) {
    return [`not JSON: ${error.message}`];
  }
  if (!validEnvelope(envelope)) {
    return validEnvelope.errors.map((e) => `${e.instancePath || "/"} ${e.message}`);
  }
  const problems = [];
  // A timer (message schedule) carries the event it will publish to its target subject.
  const target = msg.headers?.get("Nats-Schedule-Target") || msg.subject;
  if (envelope.subject !== target) {
    problems.push(`envelope subject ${envelope.subject} on NATS subject ${target}`);
  }
  const msgId = msg.headers?.get("Nats-Msg-Id");
  if (msgId && msgId !== envelope.id) {
    problems.push(`Nats-Msg-Id ${msgId} is not the envelope id ${envelope.id}`);
  }
  return problems;
}

async function main() {
  const nc = await connect({
    servers: process.env.NATS_URL ?? "nats://127.0.0.1:4222",
    user: process.env.NATS_USER || undefined,
    pass: process.env.NATS_PASSWORD || undefined,
    name: "node-contract-consumer",
  });
  const summary = { stream: STREAM, validated: {}, schedules: 0, mismatches: [] };
  try {
    const jsm = await nc.jetstreamManager();
    const { state } = await jsm.streams.info(STREAM);
    if (state.messages > 0) {
      // No name: an ordered, ephemeral consumer from the first message; it acks nothing.
      const consumer = await nc.jetstream().consumers.get(STREAM);
      const messages = await consumer.consume();
      let idle = setTimeout(() => messages.stop(), IDLE_MS);
      for await (const msg of messages) {
        clearTimeout(idle);
        const problems = check(msg);
        if (problems.length > 0) {
          summary.mismatches.push({ seq: msg.seq, subject: msg.subject, problems });
        } else if (msg.headers?.get("Nats-Schedule")) {
          summary.schedules += 1;
        } else {
          summary.validated[msg.subject] = (summary.validated[msg.subject] ?? 0) + 1;
        }
        if (msg.info.pending === 0) break;
        idle = setTimeout(() => messages.stop(), IDLE_MS);
      }
    }
  } finally {
    await nc.close();
  }
  for (const { seq, subject, problems } of summary.mismatches) {
    console.error(`event #${seq} on ${subject} breaks the contract: ${problems.join("; ")}`);
  }
  console.log(JSON.stringify(summary));
  const seen = summary.mismatches.length + summary.schedules + Object.keys(summary.validated).length;
  if (seen === 0) {
    console.error(`no event in stream ${STREAM}`);
    return 2;
  }
  return summary.mismatches.length > 0 ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (error) => {
    console.error(`cannot read stream ${STREAM}: ${error.message}`);
    process.exit(2);
  },
);
