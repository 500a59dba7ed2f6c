//! The profile file formats, one enum: a new format is one variant, and the
//! compiler points at every place it must be handled.

use std::io::Write;
use std::str::FromStr;

use super::{write_cpuprofile, write_flamegraph, write_folded, write_pprof, OutputError};
use crate::profile::Profile;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Chrome DevTools / VS Code / speedscope profile.
    Cpuprofile,
    /// Folded stacks (`frame;frame count`), input of flamegraph tools.
    Folded,
    /// Flame graph SVG.
    Svg,
    /// pprof's gzipped `profile.proto` (go tool pprof, continuous-profiling backends).
    Pprof,
}

impl Format {
    pub const ALL: [Format; 4] = [
        Format::Cpuprofile,
        Format::Folded,
        Format::Svg,
        Format::Pprof,
    ];

    /// What `record` and `watch` write unless told otherwise: the files a
    /// person opens; pprof is for backends, asked for by name.
    pub const DEFAULT: [Format; 3] = [Format::Cpuprofile, Format::Folded, Format::Svg];

    /// The name on the command line, which is also the file extension.
    pub fn name(self) -> &'static str {
        match self {
            Format::Cpuprofile => "cpuprofile",
            Format::Folded => "folded",
            Format::Svg => "svg",
            Format::Pprof => "pprof",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            // `go tool pprof` and the backends expect a gzipped protobuf by this name.
            Format::Pprof => "pb.gz",
            f => f.name(),
        }
    }

    /// One line for `--help`.
    pub fn help(self) -> &'static str {
        match self {
            Format::Cpuprofile => "Chrome DevTools / VS Code / speedscope profile",
            Format::Folded => "folded stacks (`frame;frame count`), input of flamegraph tools",
            Format::Svg => "flame graph SVG",
            Format::Pprof => {
                "pprof profile.proto, gzipped (go tool pprof, Pyroscope, Parca, Datadog)"
            }
        }
    }

    /// Writes `profile` in this format; `title` heads a flame graph.
    pub fn write(
        self,
        profile: &Profile,
        title: &str,
        w: &mut dyn Write,
    ) -> Result<(), OutputError> {
        match self {
            Format::Cpuprofile => write_cpuprofile(profile, w),
            Format::Folded => write_folded(profile, w),
            Format::Svg => write_flamegraph(profile, title, w),
            Format::Pprof => write_pprof(profile, w),
        }
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(name: &str) -> Result<Format, String> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| format!("unknown format {name:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>(), Ok(f));
        }
        assert!("pdf".parse::<Format>().is_err());
    }
}
