'use strict';
// The protocol of every `cargo xtask bench` workload:
//
//   node WORKLOAD.js [--units N] [--wait-stdin]
//
// `run(defaultUnits, unit)` does N units of work (`unit(i)` returns a number
// folded into a checksum) and prints, as its last stdout line, the elapsed
// milliseconds of that work alone (not node's start-up). With --wait-stdin
// it first prints `ready` and waits for a line on stdin, so a profiler can
// attach before the timed work starts.

module.exports = function run(defaultUnits, unit) {
  const argv = process.argv.slice(2);
  let units = defaultUnits;
  let waitStdin = false;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--units') units = Number(argv[++i]);
    else if (argv[i] === '--wait-stdin') waitStdin = true;
    else {
      console.error(`unknown argument ${argv[i]}`);
      process.exit(2);
    }
  }
  if (!Number.isInteger(units) || units < 1) {
    console.error('--units must be a positive integer');
    process.exit(2);
  }

  function work() {
    const start = process.hrtime.bigint();
    let checksum = 0;
    for (let i = 0; i < units; i++) checksum = (checksum + unit(i)) | 0;
    const ms = Number(process.hrtime.bigint() - start) / 1e6;
    console.log(`units ${units} checksum ${checksum}`);
    console.log(ms.toFixed(1));
  }

  if (waitStdin) {
    let started = false;
    process.stdin.on('data', () => {
      if (started) return;
      started = true;
      process.stdin.destroy();
      work();
    });
    process.stdin.on('end', () => {
      if (!started) {
        console.error('stdin closed before the start line');
        process.exit(3);
      }
    });
    console.log('ready');
  } else {
    work();
  }
};
