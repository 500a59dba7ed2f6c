//! The profile file formats, one enum: a new format is one variant, and the
//! compiler points at every place it must be handled.

use std::io::Write;
use std::str::FromStr;

use super::{write_cpuprofile, write_flamegraph, write_folded, OutputError};
use crate::profile::Profile;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Chrome DevTools / VS Code / speedscope profile.
    Cpuprofile,
    /// Folded stacks (`frame;frame count`), input of flamegraph tools.
    Folded,
    /// Flame graph SVG.
    Svg,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Cpuprofile, Format::Folded, Format::Svg];

    /// The name on the command line, which is also the file extension.
    pub fn name(self) -> &'static str {
        match self {
            Format::Cpuprofile => "cpuprofile",
            Format::Folded => "folded",
            Format::Svg => "svg",
        }
    }

    pub fn extension(self) -> &'static str {
        self.name()
    }

    /// One line for `--help`.
    pub fn help(self) -> &'static str {
        match self {
            Format::Cpuprofile => "Chrome DevTools / VS Code / speedscope profile",
            Format::Folded => "folded stacks (`frame;frame count`), input of flamegraph tools",
            Format::Svg => "flame graph SVG",
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
