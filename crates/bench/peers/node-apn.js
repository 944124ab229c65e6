// node-apn (@parse/node-apn 8.1) against the sandbox, for a same-sitting
// peer figure next to push-dispatch-bench: the same push, one send() per
// device token on one shared Notification, N in flight, 3 measured runs.
//
//   npm install --prefix /tmp/peer @parse/node-apn@8.1
//   NODE_PATH=/tmp/peer/node_modules taskset -c 1 node crates/bench/peers/node-apn.js \
//       TLS_PORT .bench 50000 512
//
// TLS_PORT is the sandbox's --tls-listen port; .bench holds its key and
// certificate (as `make bench` leaves them).
const apn = require('@parse/node-apn');
const [port, dir, total, conc] = [process.argv[2], process.argv[3], +process.argv[4], +process.argv[5]];
const provider = new apn.Provider({
  token: { key: `${dir}/AuthKey_SANDBOXK01.p8`, keyId: 'SANDBOXK01', teamId: 'SANDBOXT01' },
  address: '127.0.0.1', port: +port, ca: `${dir}/sandbox-cert.pem`, production: false,
});
function note() {
  const n = new apn.Notification();
  n.topic = 'com.example.app';
  n.alert = { title: 'Benchmark', body: 'A push of typical size for a one-time code or a chat message.' };
  n.pushType = 'alert';
  return n;
}
function token(i) { return 'a1' + i.toString(16).padStart(62, '0'); }
async function run(n, offset) {
  let next = 0, failed = 0;
  async function worker() {
    while (true) {
      const i = next++;
      if (i >= n) return;
      const r = await provider.send(shared, token(offset + i));
      if (r.failed.length) failed++;
    }
  }
  await Promise.all(Array.from({ length: conc }, worker));
  return failed;
}
const shared = note();
(async () => {
  await run(4, 1e9);
  for (let k = 0; k < 3; k++) {
    const c0 = process.cpuUsage(); const t0 = process.hrtime.bigint();
    const failed = await run(total, k * total);
    const wall = Number(process.hrtime.bigint() - t0) / 1e9;
    const c = process.cpuUsage(c0); const cpu = (c.user + c.system) / 1e6;
    console.log(`node-apn run ${k + 1}: ${(total / wall).toFixed(0)} pushes/s, ${(cpu / total * 1e6).toFixed(1)} µs CPU per push, failed ${failed}`);
  }
  provider.shutdown();
})();
