// Node 20 lacks Promise.withResolvers (Node 22+), which js-libp2p 2.x's current transitive
// dependencies call (it-queue 1.x, through @libp2p/peer-store's mortice 3.3). relay.mjs imports
// this module first, so it runs before any of them is evaluated.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve, reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
