'use strict';
// A workload made of system calls: each unit makes 500 `fstat` calls on an
// open file, so the target enters the kernel several hundred thousand
// times a second. While any syscall tracepoint is enabled (`record` traces
// `epoll_wait` for the event-loop measure), every system call of the
// machine takes the kernel's traced path: `cargo xtask bench --paired
// --workload syscall` measures what that costs a process that lives in
// system calls, the worst case.
const fs = require('fs');

const fd = fs.openSync(__filename, 'r');

function unit() {
  let size = 0;
  for (let k = 0; k < 500; k++) size += fs.fstatSync(fd).size & 1;
  return size;
}

require('./harness')(4000, unit);
