//! pprof's `profile.proto`, gzipped: the format `go tool pprof`, Pyroscope,
//! Parca, Datadog and Google Cloud Profiler read.
//!
//! The messages are written out by hand from
//! github.com/google/pprof/proto/profile.proto with prost's derive, so the
//! build needs no `protoc`. Only the fields nodeprof fills are declared;
//! field numbers are the schema's.

use std::collections::HashMap;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use flate2::write::GzEncoder;
use flate2::Compression;
use prost::Message;

use super::OutputError;
use crate::clock::monotonic_ns;
use crate::profile::{Frame, FrameId, FrameKind, Profile, StackId, TimeKind};

#[derive(Clone, PartialEq, Message)]
pub(crate) struct PprofProfile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<PprofSample>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct PprofSample {
    /// Leaf first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Innermost (inlined) function first.
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
    #[prost(int64, tag = "5")]
    pub start_line: i64,
}

/// pprof's string table: index 0 is the empty string, as the format requires.
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Strings {
        Strings {
            table: vec![String::new()],
            index: HashMap::from([(String::new(), 0)]),
        }
    }

    fn id(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }

    fn value_type(&mut self, kind: &str, unit: &str) -> ValueType {
        ValueType {
            r#type: self.id(kind),
            unit: self.id(unit),
        }
    }
}

/// What one sample's time is: the `--off-cpu` and `--wall` profiles are
/// not CPU time, and a backend must not add them to CPU profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clock {
    Cpu,
    OffCpu,
    Wall,
}

impl Clock {
    fn of(profile: &Profile) -> Clock {
        match profile.time {
            TimeKind::Cpu => Clock::Cpu,
            TimeKind::OffCpu => Clock::OffCpu,
            TimeKind::Wall => Clock::Wall,
        }
    }

    /// The time sample type, as pprof's other producers name them.
    fn sample_type(self) -> &'static str {
        match self {
            Clock::Cpu => "cpu",
            Clock::OffCpu => "off-cpu",
            Clock::Wall => "wall",
        }
    }
}

/// pprof's name of a frame: what a person reads (`frame_label` without the
/// file, which pprof shows from `filename` itself).
fn function_name(frame: &Frame) -> String {
    match (frame.name.is_empty(), frame.kind) {
        (false, _) => frame.name.replace(['\n', '\r'], ""),
        (true, FrameKind::Js) => "(anonymous)".into(),
        (true, _) => "[unknown]".into(),
    }
}

/// pprof's functions and locations: one location per profile frame, one
/// function per name, file and start line (frames that differ only in what
/// pprof does not show, a column or a script id, share it).
#[derive(Default)]
struct Table {
    functions: Vec<Function>,
    function_ids: HashMap<(String, String, i64), u64>,
    locations: Vec<Location>,
    /// By profile frame; `None` is the `(program)` of an empty stack.
    location_ids: HashMap<Option<FrameId>, u64>,
}

impl Table {
    fn location(&mut self, id: Option<FrameId>, frame: &Frame, strings: &mut Strings) -> u64 {
        if let Some(&location) = self.location_ids.get(&id) {
            return location;
        }
        let name = function_name(frame);
        let start_line = frame.line.map_or(0, |l| i64::from(l) + 1);
        let file = match frame.kind {
            FrameKind::Js | FrameKind::Native => frame.location.clone(),
            _ => String::new(),
        };
        let key = (name, file, start_line);
        let function_id = match self.function_ids.get(&key) {
            Some(&f) => f,
            None => {
                let f = self.functions.len() as u64 + 1;
                self.functions.push(Function {
                    id: f,
                    name: strings.id(&key.0),
                    // pprof shortens C++ names itself for display; the
                    // system name is the symbol as it was found.
                    system_name: strings.id(&key.0),
                    filename: strings.id(&key.1),
                    start_line,
                });
                self.function_ids.insert(key, f);
                f
            }
        };
        let location = self.locations.len() as u64 + 1;
        self.locations.push(Location {
            id: location,
            // One line: the profile holds inlined functions as frames of their own.
            line: vec![Line {
                function_id,
                line: start_line,
            }],
        });
        self.location_ids.insert(id, location);
        location
    }
}

pub(crate) fn build(profile: &Profile, time_nanos: i64) -> PprofProfile {
    let mut strings = Strings::new();
    let clock = Clock::of(profile);
    let period = profile.period_ns() as i64;
    let mut sample_type = vec![
        strings.value_type("samples", "count"),
        strings.value_type(clock.sample_type(), "nanoseconds"),
    ];
    // A wall profile also says which of its time was on CPU.
    if clock == Clock::Wall {
        sample_type.push(strings.value_type("cpu", "nanoseconds"));
    }
    let period_type = strings.value_type(clock.sample_type(), "nanoseconds");

    let thread_key = strings.id("thread name");
    let tid_key = strings.id("thread id");
    let program = Frame::meta("(program)");
    let mut table = Table::default();
    // Samples with the same thread and stack are one pprof sample.
    let mut merged: HashMap<(u32, StackId), (i64, i64)> = HashMap::new();
    for s in &profile.samples {
        let e = merged.entry((s.tid, s.stack)).or_default();
        e.0 += 1;
        e.1 += i64::from(!s.off_cpu);
    }
    let mut keys: Vec<_> = merged.keys().copied().collect();
    keys.sort();
    let mut samples = Vec::with_capacity(keys.len());
    for key in keys {
        let (tid, stack) = key;
        let (count, on_cpu) = merged[&key];
        let frames = profile.stack(stack);
        let location_id: Vec<u64> = if frames.is_empty() {
            // As in the folded file and `.cpuprofile`: a sample without a stack is `(program)`.
            vec![table.location(None, &program, &mut strings)]
        } else {
            frames
                .iter()
                .rev()
                .map(|&f| table.location(Some(f), profile.frame(f), &mut strings))
                .collect()
        };
        let mut value = vec![count, count * period];
        if clock == Clock::Wall {
            value.push(on_cpu * period);
        }
        samples.push(PprofSample {
            location_id,
            value,
            label: vec![
                Label {
                    key: thread_key,
                    str: strings.id(profile.thread_name(tid)),
                    num: 0,
                },
                Label {
                    key: tid_key,
                    str: 0,
                    num: i64::from(tid),
                },
            ],
        });
    }

    PprofProfile {
        sample_type,
        sample: samples,
        location: table.locations,
        function: table.functions,
        time_nanos,
        duration_nanos: profile.duration_ns() as i64,
        period_type: Some(period_type),
        period,
        default_sample_type: strings.id(clock.sample_type()),
        string_table: strings.table,
    }
}

/// Wall-clock time of a CLOCK_MONOTONIC instant, ns since the epoch.
fn epoch_ns(monotonic: u64) -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    now - (monotonic_ns() as i64 - monotonic as i64)
}

pub fn write_pprof(profile: &Profile, w: impl Write) -> Result<(), OutputError> {
    let message = build(profile, epoch_ns(profile.start_ns));
    let mut gz = GzEncoder::new(w, Compression::default());
    gz.write_all(&message.encode_to_vec())?;
    gz.finish()?.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::testdata::sample_profile;

    fn string<'a>(p: &'a PprofProfile, i: i64) -> &'a str {
        &p.string_table[i as usize]
    }

    /// Each sample as `thread tid: leaf-first function names = values`.
    fn render(p: &PprofProfile) -> Vec<String> {
        let function = |id: u64| p.function.iter().find(|f| f.id == id).unwrap();
        let location = |id: u64| p.location.iter().find(|l| l.id == id).unwrap();
        p.sample
            .iter()
            .map(|s| {
                let names: Vec<&str> = s
                    .location_id
                    .iter()
                    .flat_map(|&l| location(l).line.iter())
                    .map(|line| string(p, function(line.function_id).name))
                    .collect();
                format!(
                    "{} {}: {} = {:?}",
                    string(p, s.label[0].str),
                    s.label[1].num,
                    names.join(";"),
                    s.value
                )
            })
            .collect()
    }

    #[test]
    fn cpu_profile() {
        let p = build(&sample_profile(), 7);
        let types: Vec<(&str, &str)> = p
            .sample_type
            .iter()
            .map(|t| (string(&p, t.r#type), string(&p, t.unit)))
            .collect();
        assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
        assert_eq!(string(&p, p.default_sample_type), "cpu");
        let period = p.period_type.as_ref().unwrap();
        assert_eq!(
            (string(&p, period.r#type), string(&p, period.unit)),
            ("cpu", "nanoseconds")
        );
        assert_eq!(p.period, 1_000_000_000 / 99);
        assert_eq!((p.time_nanos, p.duration_nanos), (7, 1_000_000));
        assert_eq!(p.string_table[0], "");
        let ns = p.period;
        assert_eq!(
            render(&p),
            [
                format!("node 100: fib;main;node::Start = [1, {ns}]"),
                format!("node 100: fib;fib;fib;main;node::Start = [2, {}]", 2 * ns),
                format!(
                    "node 100: ksys_write;write;Builtin:CallFunction;main;node::Start = [1, {ns}]"
                ),
                format!("node 100: (garbage collector);node::Start = [1, {ns}]"),
                format!("node 100: (program) = [1, {ns}]"),
                "libuv-worker 101: uv_work;loop = [1, 10101010]".to_string(),
                "libuv-worker 102: uv_work;loop = [1, 10101010]".to_string(),
                "V8 GC 103: (program) = [1, 10101010]".to_string(),
            ]
        );
        let total: i64 = p.sample.iter().map(|s| s.value[0]).sum();
        assert_eq!(total, 9);
    }

    #[test]
    fn js_functions_carry_file_and_line() {
        let p = build(&sample_profile(), 0);
        let fib = p
            .function
            .iter()
            .find(|f| string(&p, f.name) == "fib")
            .unwrap();
        assert_eq!(string(&p, fib.filename), "file:///app/fib.js");
        assert_eq!(fib.start_line, 3);
        assert_eq!(string(&p, fib.system_name), "fib");
        let write = p
            .function
            .iter()
            .find(|f| string(&p, f.name) == "write")
            .unwrap();
        assert_eq!(string(&p, write.filename), "/usr/lib/libc.so.6");
        // One function per name, file and line, however many stacks hold it.
        assert_eq!(
            p.function
                .iter()
                .filter(|f| string(&p, f.name) == "fib")
                .count(),
            1
        );
    }

    #[test]
    fn off_cpu_and_wall_are_not_cpu_time() {
        let mut off = Profile::new(1, 100, 0);
        let f = off.intern_frame(Frame::new(
            FrameKind::Native,
            "epoll_wait",
            "/lib/libc.so.6",
        ));
        let s = off.intern_stack(vec![f]);
        off.add_off_cpu_sample(10, 1, "node", s);
        off.add_off_cpu_sample(20, 1, "node", s);
        off.time = TimeKind::OffCpu;
        let p = build(&off, 0);
        assert_eq!(string(&p, p.sample_type[1].r#type), "off-cpu");
        assert_eq!(string(&p, p.default_sample_type), "off-cpu");
        assert_eq!(p.sample[0].value, [2, 20_000_000]);

        // A wall recording is wall time even when every sample was off CPU.
        let mut idle = off.clone();
        idle.time = TimeKind::Wall;
        let p = build(&idle, 0);
        assert_eq!(string(&p, p.default_sample_type), "wall");
        let mut wall = idle.clone();
        wall.add_sample(30, 1, "node", s);
        let p = build(&wall, 0);
        let types: Vec<&str> = p.sample_type.iter().map(|t| string(&p, t.r#type)).collect();
        assert_eq!(types, ["samples", "wall", "cpu"]);
        assert_eq!(string(&p, p.period_type.as_ref().unwrap().r#type), "wall");
        assert_eq!(p.sample[0].value, [3, 30_000_000, 10_000_000]);
    }

    #[test]
    fn gzipped_and_decodable() {
        let mut buf = Vec::new();
        write_pprof(&sample_profile(), &mut buf).unwrap();
        assert_eq!(&buf[..2], &[0x1f, 0x8b], "gzip magic");
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&buf[..]), &mut raw).unwrap();
        let p = PprofProfile::decode(&raw[..]).unwrap();
        assert_eq!(p.sample.len(), 8);
        // Recorded just now, within a day either way.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        assert!((now - p.time_nanos).abs() < 86_400_000_000_000);
    }
}
