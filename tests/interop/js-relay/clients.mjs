// Light relay clients for benchmarks/bench_relay_memory.py: N js-libp2p nodes in this one process.
//
// Each node has TCP, Noise, Yamux, identify and circuitRelayTransport(), and either reserves on
// the relay (it listens on <relay>/p2p-circuit, which makes one "configured" reservation) or,
// with --connect-only, merely dials it: the same node either way, so a "connected only" baseline
// differs from "reserved" by the reservation alone. js-libp2p's connection monitor (a ping every
// 10 s per connection) is off, so the connections stay idle.
//
//   node clients.mjs --relay MULTIADDR --count N [--connect-only] [--parallel P]
//                    [--attempts A] [--timeout SECONDS]
//
// Nodes start P at a time; a failed attempt is counted, the node stopped and started afresh, up to
// A attempts. When every node holds (or has given up, or --timeout has passed) it prints one JSON
// line {"ready", "failed", "retried", "seconds"}, then holds them until stdin closes (or SIGTERM),
// prints {"still_held", "lost", "count"} (nodes whose relay connection, and reservation if they
// made one, were still there; connections to the relay that closed while held or being set up,
// not by this script) and stops them all. Diagnostics go to stderr.
import './node20.mjs'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { identify } from '@libp2p/identify'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import { parseArgs } from 'node:util'

const { values: options } = parseArgs({
  options: {
    relay: { type: 'string' },
    count: { type: 'string' },
    'connect-only': { type: 'boolean', default: false },
    parallel: { type: 'string', default: '16' },
    attempts: { type: 'string', default: '3' },
    timeout: { type: 'string', default: '300' }
  }
})
if (options.relay == null || options.count == null) {
  process.stderr.write('usage: node clients.mjs --relay MULTIADDR --count N [--connect-only]\n')
  process.exit(2)
}
const relay = multiaddr(options.relay)
const relayPeer = relay.getPeerId()
const count = Number(options.count)
const reserve = !options['connect-only']
const parallel = Number(options.parallel)
const attempts = Number(options.attempts)
const ATTEMPT_MS = 60_000
const STOP_MS = 10_000
const deadline = Date.now() + Number(options.timeout) * 1000

const nodes = []
let retried = 0
let failed = 0
let lost = 0

function withTimeout (promise, ms, what) {
  let timer
  const expired = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took over ${ms} ms`)), ms)
  })
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer))
}

async function attempt () {
  const node = await createLibp2p({
    start: false,
    // listening on <relay>/p2p-circuit dials the relay and reserves; start() fails if that does
    addresses: { listen: reserve ? [`${options.relay}/p2p-circuit`] : [] },
    transports: [tcp(), circuitRelayTransport({ reservationCompletionTimeout: ATTEMPT_MS })],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: { identify: identify() },
    connectionMonitor: { enabled: false }
  })
  let ours = false // true once this script stops the node: its connection closing is no loss
  node.addEventListener('connection:close', (evt) => {
    const conn = evt.detail
    if (ours || stopping || !conn.remotePeer.equals(relayPeer)) return
    lost++
    process.stderr.write('clients.mjs: the relay closed a connection ' +
      `${(Date.now() - conn.timeline.open) / 1000} s after it opened\n`)
  })
  try {
    const ms = Math.max(1, Math.min(ATTEMPT_MS, deadline - Date.now()))
    await withTimeout(node.start(), ms, 'start')
    if (!reserve) {
      await node.dial(relay, { signal: AbortSignal.timeout(ms) })
    }
    return node
  } catch (err) {
    ours = true
    await withTimeout(node.stop(), STOP_MS, 'stop').catch(() => {})
    throw err
  }
}

async function one () {
  for (let i = 1; ; i++) {
    try {
      nodes.push(await attempt())
      return
    } catch (err) {
      if (i >= attempts || Date.now() >= deadline) {
        failed++
        process.stderr.write(`clients.mjs: a node gave up after ${i} attempts: ${err.message}\n`)
        return
      }
      retried++
    }
  }
}

function holds (node) {
  const connected = node.getConnections(relayPeer).some((c) => c.status === 'open')
  const circuit = node.getMultiaddrs().some((a) => a.toString().includes('/p2p-circuit'))
  return connected && (!reserve || circuit)
}

let stopping = false
async function stop (why) {
  if (stopping) return
  stopping = true
  process.stderr.write(`clients.mjs: stopping ${nodes.length} nodes (${why})\n`)
  const timer = setTimeout(() => process.exit(1), 2 * STOP_MS)
  timer.unref()
  process.stdout.write(JSON.stringify({ still_held: nodes.filter(holds).length, lost, count }) + '\n')
  await Promise.allSettled(nodes.map((n) => withTimeout(n.stop(), STOP_MS, 'stop')))
  process.exit(0)
}

process.on('SIGTERM', () => { void stop('SIGTERM') })
process.on('SIGINT', () => { void stop('SIGINT') })

const started = Date.now()
let next = 0
await Promise.all(Array.from({ length: Math.min(parallel, count) }, async () => {
  while (next < count && !stopping) {
    next++
    await one()
  }
}))
process.stdout.write(JSON.stringify({
  ready: nodes.length,
  failed,
  retried,
  seconds: (Date.now() - started) / 1000
}) + '\n')

process.stdin.on('end', () => { void stop('stdin closed') })
process.stdin.on('close', () => { void stop('stdin closed') })
process.stdin.resume()
