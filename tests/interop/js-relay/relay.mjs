// A js-libp2p circuit relay v2 server for meshnat's interop test (../test_js_relay.py).
//
// Listens on TCP 127.0.0.1 with Noise, Yamux, identify and circuitRelayServer(); prints one JSON
// line {"peer_id", "addrs"} on stdout, then runs until stdin closes, SIGTERM or SIGINT.
// Diagnostics go to stderr (DEBUG=libp2p:* for more).
//
//   node relay.mjs [--port N] [--max-reservations N] [--data-limit BYTES]
//
// Without options the relay keeps js-libp2p's defaults (15 reservations; circuits limited to
// 2 min and 128 KiB, both directions counted together).
import './node20.mjs'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { circuitRelayServer } from '@libp2p/circuit-relay-v2'
import { identify } from '@libp2p/identify'
import { tcp } from '@libp2p/tcp'
import { createLibp2p } from 'libp2p'
import { parseArgs } from 'node:util'

const { values: options } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    'max-reservations': { type: 'string' },
    'data-limit': { type: 'string' }
  }
})
const reservations = {}
if (options['max-reservations'] != null) {
  reservations.maxReservations = Number(options['max-reservations'])
}
if (options['data-limit'] != null) {
  reservations.defaultDataLimit = BigInt(options['data-limit'])
}

const node = await createLibp2p({
  addresses: { listen: [`/ip4/127.0.0.1/tcp/${options.port}`] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    relay: circuitRelayServer({ reservations })
  }
})

let stopping = false
async function stop (why) {
  if (stopping) return
  stopping = true
  process.stderr.write(`relay.mjs: stopping (${why})\n`)
  const timer = setTimeout(() => process.exit(1), 5000)
  timer.unref()
  await node.stop()
  process.exit(0)
}

process.on('SIGTERM', () => { void stop('SIGTERM') })
process.on('SIGINT', () => { void stop('SIGINT') })
process.stdin.on('end', () => { void stop('stdin closed') })
process.stdin.on('close', () => { void stop('stdin closed') })
process.stdin.resume()

process.stdout.write(JSON.stringify({
  peer_id: node.peerId.toString(),
  addrs: node.getMultiaddrs().map((a) => a.toString())
}) + '\n')
