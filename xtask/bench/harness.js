'use strict';
// The protocol of every `cargo xtask bench` workload:
//
//   node WORKLOAD.js [--units N] [--wait-stdin]
//   node WORKLOAD.js --rate
//
// `run(defaultUnits, unit)` does N units of work (`unit(i)` returns a number
// folded into a checksum) and prints, as its last stdout line, the elapsed
// milliseconds of that work alone (not node's start-up). With --wait-stdin
// it first prints `ready` and waits for a line on stdin, so a profiler can
// attach before the timed work starts.
//
// With --rate it works until killed and prints, every 100 ms, a line
// `T N`: CLOCK_MONOTONIC in ns (process.hrtime) and the units done since the
// previous line, so a bench can compare windows of one long run (`--paired`).

module.exports = function run(defaultUnits, unit) {
  const argv = process.argv.slice(2);
  let units = defaultUnits;
  let waitStdin = false;
  let rate = false;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--units') units = Number(argv[++i]);
    else if (argv[i] === '--wait-stdin') waitStdin = true;
    else if (argv[i] === '--rate') rate = true;
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

  function workForever() {
    const interval = 100000000n;
    let next = process.hrtime.bigint() + interval;
    let done = 0;
    let checksum = 0;
    for (let i = 0; ; i++) {
      checksum = (checksum + unit(i)) | 0;
      done++;
      const now = process.hrtime.bigint();
      if (now >= next) {
        // The checksum keeps the work observable so it cannot be optimized away.
        process.stdout.write(`${now} ${done} ${checksum & 1}\n`);
        done = 0;
        next = now + interval;
      }
    }
  }

  if (rate) {
    workForever();
  } else if (waitStdin) {
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
