// Test harness: writes, reads and invalidates Next.js cache entries in Redis exactly as an
// application using @fortedigital/nextjs-cache-handler's `redis-strings` handler does, so the Rust
// integration tests can compare the invalidator with the handler's own revalidateTag(). See
// README.md in this directory for the contract.
//
//   node tests/frameworks/nextjs.mjs '<CONFIG_JSON>' write|read|invalidate TAG...|race TAG KEYS STOPFILE
//
// CONFIG_JSON:
//   url         "redis://127.0.0.1:6379/12" (node-redis createClient)
//   cluster     ["redis://127.0.0.1:7001", ...] instead of url (node-redis createCluster, wrapped
//               in the package's cluster adapter as its README shows)
//   key_prefix  the handler's keyPrefix ("" allowed)
//
// Entries are written the way the package's CacheHandler (the Next.js `cacheHandler` module) hands
// a fetch() result to redis-strings: a FETCH value, `tags`, `lastModified` and a `lifespan` whose
// expireAt is also written to `__sharedTagsTtl__` and set as the key's EXPIREAT. A write line may
// carry "revalidate": SECONDS (default: none, i.e. the CacheHandler's one-year default stale age)
// or "lifespan": null (no lifespan: no TTL, no __sharedTagsTtl__ field).
//
// Every stdout line is one JSON object; errors go to stderr with exit status 1.

import { existsSync } from "node:fs";
import { createInterface } from "node:readline";
import { createClient, createCluster } from "redis";
import createHandler from "@fortedigital/nextjs-cache-handler/redis-strings";
import { withAdapter } from "@fortedigital/nextjs-cache-handler/cluster/adapter";

// The package's CacheHandler: defaultStaleAge one year, expireAge = floor(staleAge * 1.5).
const DEFAULT_STALE_AGE = 60 * 60 * 24 * 365;
const MAX_INT32 = 2 ** 31 - 1;

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function fail(msg) {
  process.stderr.write(`nextjs.mjs: ${msg}\n`);
  process.exit(1);
}

// A reader that stops reading (EPIPE) ends the harness with a one-line error, not a stack trace.
process.stdout.on("error", (e) => fail(`stdout: ${e?.code ?? e}`));

// CacheHandler.#getLifespanParameters(lastModified, revalidate)
function lifespanFor(lastModified, revalidate) {
  const lastModifiedAt = Math.floor(lastModified / 1000);
  const staleAge = revalidate || DEFAULT_STALE_AGE;
  const expireAge = Math.min(Math.floor(staleAge * 1.5), MAX_INT32);
  return {
    expireAge,
    expireAt: lastModifiedAt + expireAge,
    lastModifiedAt,
    revalidate,
    staleAge,
    staleAt: lastModifiedAt + staleAge,
  };
}

// What Next 16 stores for a cached fetch(): CachedFetchValue { kind: "FETCH", data, tags, revalidate }.
function entryFor(line) {
  const tags = Array.isArray(line.tags) ? line.tags : [];
  const revalidate = typeof line.revalidate === "number" ? line.revalidate : false;
  const lastModified = Date.now();
  return {
    lastModified,
    lifespan: "lifespan" in line && line.lifespan === null ? null : lifespanFor(lastModified, revalidate),
    tags,
    value: {
      kind: "FETCH",
      data: { headers: {}, body: line.value ?? "", status: 200, url: "" },
      tags,
      revalidate: revalidate === false ? DEFAULT_STALE_AGE : revalidate,
    },
  };
}

async function* stdinLines() {
  const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const raw of rl) {
    const line = raw.trim();
    if (line === "") continue;
    const obj = JSON.parse(line);
    if (obj === null || typeof obj !== "object" || typeof obj.key !== "string") {
      throw new Error(`stdin line without a string "key": ${line}`);
    }
    yield obj;
  }
}

async function connect(cfg) {
  let client;
  if (cfg.cluster !== undefined) {
    if (!Array.isArray(cfg.cluster) || cfg.cluster.length === 0) {
      throw new Error('"cluster" must be a non-empty list of redis:// URLs');
    }
    client = withAdapter(createCluster({ rootNodes: cfg.cluster.map((url) => ({ url })) }));
  } else {
    client = createClient({ url: cfg.url ?? "redis://127.0.0.1:6379" });
  }
  // Without a listener node-redis treats connection errors as unhandled; surface them instead.
  client.on("error", (e) => fail(`redis: ${e?.message ?? e}`));
  await client.connect();
  return client;
}

async function main() {
  const [configJson, command, ...args] = process.argv.slice(2);
  if (configJson === undefined || command === undefined) {
    fail("usage: nextjs.mjs '<CONFIG_JSON>' write|read|invalidate TAG...|race TAG KEYS STOPFILE");
  }
  const cfg = JSON.parse(configJson);
  if (cfg === null || typeof cfg !== "object") fail("CONFIG_JSON must be a JSON object");
  if (!["write", "read", "invalidate", "race"].includes(command)) {
    fail(`unknown command "${command}" (write, read, invalidate, race)`);
  }

  const client = await connect(cfg);
  const handler = createHandler({ client, keyPrefix: cfg.key_prefix ?? "" });
  try {
    switch (command) {
      case "write": {
        let n = 0;
        for await (const line of stdinLines()) {
          await handler.set(line.key, entryFor(line), {});
          n += 1;
        }
        out({ written: n });
        break;
      }
      case "read": {
        for await (const line of stdinLines()) {
          const implicitTags = Array.isArray(line.implicit_tags) ? line.implicit_tags : [];
          const entry = await handler.get(line.key, { implicitTags });
          out(entry
            ? { key: line.key, hit: true, value: entry.value?.data?.body ?? null }
            : { key: line.key, hit: false });
        }
        break;
      }
      case "invalidate": {
        if (args.length === 0) fail("invalidate needs at least one TAG");
        // Next.js calls revalidateTag once per tag.
        for (const tag of args) await handler.revalidateTag(tag);
        out({ invalidated: args });
        break;
      }
      case "race": {
        const keys = Number(args[1]);
        if (args.length !== 3 || !Number.isInteger(keys) || keys < 1) {
          fail("usage: race TAG KEYS STOPFILE (KEYS >= 1)");
        }
        const [tag, , stop] = args;
        for (let seq = 0; !existsSync(stop); seq += 1) {
          const key = `race-${seq % keys}`;
          await handler.set(key, entryFor({ key, tags: [tag], value: String(seq) }), {});
          out({ key, seq, done_ms: Date.now() });
        }
        break;
      }
    }
  } finally {
    await client.close();
  }
}

main().catch((e) => fail(e?.stack ?? String(e)));
