//! V8 object layout of one node binary, from its `v8dbg_*` postmortem symbols,
//! the V8 version symbols, and version-keyed fallbacks where a value is not
//! exported (never keyed by node patch release).
//!
//! Class fields are matched by prefix, `v8dbg_class_<Class>__<field>__`, so the
//! type-suffix renames V8 does between versions (`Object` → `Tagged_Object_` →
//! `Tagged_NameOrScopeInfoT_`) do not matter.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use nodeprof_common::V8ProbeConfig;

use super::elf::{
    read_symbols, v8_version, ElfError, Sym, SymbolFilter, Symbols, BLOB_CODE, BLOB_CODE_DATA,
    BLOB_CODE_SIZE, VERSION_SYMBOLS,
};

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(transparent)]
    Elf(#[from] ElfError),
    #[error("{path} carries no V8 postmortem (v8dbg_*) symbols: not a V8 binary, or stripped")]
    NoV8Symbols { path: PathBuf },
    #[error("{path}: V8 layout incomplete, JS frames cannot be named: {}", report.problems.join("; "))]
    Incomplete {
        path: PathBuf,
        report: Box<LayoutReport>,
    },
}

impl LayoutError {
    /// What was found before the layout turned out unusable (for `nodeprof info`).
    pub fn report(&self) -> Option<&LayoutReport> {
        match self {
            LayoutError::Incomplete { report, .. } => Some(report),
            _ => None,
        }
    }
}

/// `major.minor.build.patch` from `v8::internal::Version::{major_,minor_,build_,patch_}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct V8Version {
    pub major: u32,
    pub minor: u32,
    pub build: u32,
    pub patch: u32,
}

impl V8Version {
    pub const fn new(major: u32, minor: u32, build: u32, patch: u32) -> V8Version {
        V8Version {
            major,
            minor,
            build,
            patch,
        }
    }

    /// Whether this version is at least `major.minor.build` (any patch).
    pub fn at_least(&self, major: u32, minor: u32, build: u32) -> bool {
        (self.major, self.minor, self.build) >= (major, minor, build)
    }
}

impl fmt::Display for V8Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}.{}",
            self.major, self.minor, self.build, self.patch
        )
    }
}

/// Oldest and newest V8 whose layout was verified against live processes
/// (node 18 … 26). Outside, fallbacks are extrapolated and `info` says so.
pub const VERIFIED_V8_OLDEST: V8Version = V8Version::new(10, 2, 0, 0);
pub const VERIFIED_V8_NEWEST: V8Version = V8Version::new(14, 6, u32::MAX, 0);

/// Where a layout value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldSource {
    /// The named `v8dbg_*` (or version) symbol of the binary.
    Symbol(String),
    /// Not exported by this binary: a value keyed by V8 version range; the text says which.
    Fallback(&'static str),
    /// Neither a symbol nor a fallback.
    Missing,
}

impl fmt::Display for FieldSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldSource::Symbol(s) => write!(f, "symbol {s}"),
            FieldSource::Fallback(why) => write!(f, "fallback ({why})"),
            FieldSource::Missing => f.write_str("missing"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldReport {
    /// `Class.field` or a constant's name.
    pub name: &'static str,
    pub value: Option<i64>,
    pub source: FieldSource,
    /// Needed to name JS frames at all (a missing optional field only loses detail).
    pub required: bool,
}

/// What [`V8Layout::from_binary`] found, for `nodeprof info`.
#[derive(Debug, Clone, Default)]
pub struct LayoutReport {
    pub path: PathBuf,
    pub v8_version: Option<V8Version>,
    /// Number of distinct `v8dbg_*` symbols (in `.dynsym` and `.symtab`).
    pub v8dbg_symbols: usize,
    /// How many of them were found only in `.symtab`.
    pub symtab_only: usize,
    pub fields: Vec<FieldReport>,
    pub frame_types: usize,
    pub embedded_blob: Option<EmbeddedBlob>,
    /// Why naming does not work (when it does not) and warnings that lose detail.
    pub problems: Vec<String>,
    /// JS frames can be named (name, script, position).
    pub naming_available: bool,
}

impl fmt::Display for LayoutReport {
    /// The report as `nodeprof info` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "binary: {}", self.path.display())?;
        match self.v8_version {
            Some(v) => writeln!(f, "V8: {v}")?,
            None => writeln!(f, "V8: unknown")?,
        }
        writeln!(
            f,
            "v8dbg symbols: {} ({} only in .symtab)",
            self.v8dbg_symbols, self.symtab_only
        )?;
        writeln!(
            f,
            "JS frame naming: {}",
            if self.naming_available {
                "available"
            } else {
                "NOT available"
            }
        )?;
        for p in &self.problems {
            writeln!(f, "  ! {p}")?;
        }
        match &self.embedded_blob {
            Some(b) => writeln!(
                f,
                "builtins blob: vaddr {:#x} size {:#x} file offset {:#x}",
                b.vaddr, b.size, b.file_offset
            )?,
            None => writeln!(f, "builtins blob: not found")?,
        }
        writeln!(f, "frame types: {}", self.frame_types)?;
        let symbols = self
            .fields
            .iter()
            .filter(|x| matches!(x.source, FieldSource::Symbol(_)))
            .count();
        writeln!(
            f,
            "layout fields: {} from symbols, {} from fallbacks, {} missing",
            symbols,
            self.fallbacks().count(),
            self.missing().count()
        )?;
        for field in &self.fields {
            let value = field
                .value
                .map_or_else(|| "-".to_string(), |v| v.to_string());
            let req = if field.required { "" } else { " (optional)" };
            writeln!(
                f,
                "  {:<48} {:>6}  {}{req}",
                field.name, value, field.source
            )?;
        }
        Ok(())
    }
}

impl LayoutReport {
    pub fn fallbacks(&self) -> impl Iterator<Item = &FieldReport> {
        self.fields
            .iter()
            .filter(|f| matches!(f.source, FieldSource::Fallback(_)))
    }

    pub fn missing(&self) -> impl Iterator<Item = &FieldReport> {
        self.fields
            .iter()
            .filter(|f| f.source == FieldSource::Missing)
    }

    pub fn field(&self, name: &str) -> Option<&FieldReport> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// The embedded builtins blob (`v8_Default_embedded_blob_code_`): the code of
/// every builtin, including the interpreter. Node 22+ also runs it from a
/// re-mapped copy of the binary at run time: match pcs by file offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedBlob {
    /// ELF virtual address of the blob's first byte.
    pub vaddr: u64,
    pub size: u64,
    /// File offset of the blob's first byte.
    pub file_offset: u64,
}

impl EmbeddedBlob {
    pub fn contains_vaddr(&self, vaddr: u64) -> bool {
        vaddr >= self.vaddr && vaddr - self.vaddr < self.size
    }

    pub fn contains_file_offset(&self, offset: u64) -> bool {
        offset >= self.file_offset && offset - self.file_offset < self.size
    }
}

/// Instance types (`v8dbg_type_*`, values of `Map::instance_type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceTypes {
    pub shared_function_info: u16,
    pub js_function_first: u16,
    pub js_function_last: u16,
    pub scope_info: u16,
    pub script: u16,
    /// DebugInfo: only V8 < 12 keeps it in the SFI's script slot.
    pub debug_info: Option<u16>,
    pub fixed_array: u16,
    pub oddball: Option<u16>,
    /// Every `UncompiledData*` type.
    pub uncompiled_data: Vec<u16>,
    /// Instance types below this are strings.
    pub first_nonstring: u16,
}

/// String representation and field offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StringLayout {
    pub length: u32,
    pub seq_one_byte_chars: u32,
    pub seq_two_byte_chars: u32,
    pub cons_first: u32,
    pub cons_second: u32,
    pub sliced_parent: u32,
    pub sliced_offset: u32,
    pub thin_actual: u32,
    pub external_resource: u32,
    /// The cached `resource_data` pointer of external strings.
    pub external_data: u32,
    pub representation_mask: u16,
    pub encoding_mask: u16,
    pub one_byte_tag: u16,
    pub seq_tag: u16,
    pub cons_tag: u16,
    pub external_tag: u16,
    pub sliced_tag: u16,
    pub thin_tag: u16,
    /// External strings with this bit have no cached data pointer.
    pub uncached_external_mask: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SfiLayout {
    pub function_data: u32,
    pub name_or_scope_info: u32,
    pub script_or_debug_info: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UncompiledDataLayout {
    pub inferred_name: u32,
    pub start_position: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptLayout {
    pub source: u32,
    pub name: u32,
    pub line_offset: u32,
    pub column_offset: u32,
    pub line_ends: u32,
    pub id: u32,
}

/// ScopeInfo: slot indices count tagged words after the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeInfoLayout {
    pub flags_idx: u32,
    pub context_local_count_idx: u32,
    pub first_vars: u32,
    /// Flags are a raw u32 in the low half of the slot (V8 ≥ 12.8), else a Smi.
    pub flags_raw_u32: bool,
    /// `position_info` at fixed slots 3/4 (V8 ≥ 12.8.44), else after the variable part.
    pub fixed_position_info: bool,
    /// MODULE scopes carry `module_variable_count` before the names (V8 ≥ 12).
    pub module_variable_count_slot: bool,
    pub scope_type_mask: u32,
    pub function_scope: u32,
    pub module_scope: u32,
    pub script_scope: u32,
    pub eval_scope: u32,
    pub has_saved_class_variable_bit: u32,
    pub function_variable_shift: u32,
    pub function_variable_mask: u32,
    pub has_inferred_function_name_bit: u32,
    /// Context local names are inlined below this count, else in a hash table.
    pub max_inlined_local_names: u32,
}

/// The V8 layout of one binary. Build it with [`V8Layout::from_binary`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V8Layout {
    pub version: V8Version,
    pub heap_object_tag: u64,
    pub heap_object_tag_mask: u64,
    pub smi_tag_mask: u64,
    pub fp_context: i32,
    pub fp_function: i32,
    pub fp_bytecode_array: i32,
    pub fp_bytecode_offset: i32,
    pub heap_object_map: u32,
    pub map_instance_type: u32,
    pub js_function_shared: u32,
    pub types: InstanceTypes,
    pub strings: StringLayout,
    pub sfi: SfiLayout,
    pub uncompiled: UncompiledDataLayout,
    pub script: ScriptLayout,
    /// `DebugInfo::script` (V8 < 12 only).
    pub debug_info_script: Option<u32>,
    pub fixed_array_length: u32,
    pub fixed_array_data: u32,
    pub scope_info: ScopeInfoLayout,
    pub frame_types: BTreeMap<u32, String>,
    pub embedded_blob: Option<EmbeddedBlob>,
    /// Optimized code: where to find inlined functions. `None` when the
    /// binary lacks a value: frames are then named without their inlining.
    pub code: Option<CodeLayout>,
}

/// Machine code objects and their deoptimization data, to expand the
/// functions TurboFan and Maglev inlined (see [`super::code`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeLayout {
    /// Instance type of the object whose body is the machine code:
    /// InstructionStream (V8 ≥ 11), Code (V8 10).
    pub container_type: u16,
    /// Offset of the first instruction from the container's start.
    pub container_instructions: u32,
    /// `InstructionStream::code`; `None` when the container is the Code.
    pub container_code: Option<u32>,
    pub code_type: u16,
    /// `Code::instruction_stream` and `Code::instruction_start` (V8 ≥ 11):
    /// both must point back at the container.
    pub code_instruction_stream: Option<u32>,
    pub code_instruction_start: Option<u32>,
    pub code_instruction_size: u32,
    pub code_flags: u32,
    pub code_kind_mask: u32,
    pub code_kind_shift: u32,
    /// CodeKind values of optimized code (MAGLEV, TURBOFAN).
    pub optimized_kinds: [u32; 2],
    pub code_deoptimization_data: u32,
    pub code_source_position_table: u32,
    /// Indices into DeoptimizationData (a FixedArray).
    pub deopt_inlined_function_count: u32,
    pub deopt_literal_array: u32,
    pub deopt_inlining_positions: u32,
    pub deopt_shared_function_info: u32,
    /// V8 ≥ 13 keeps a SharedFunctionInfoWrapper there: its `shared_info` offset.
    pub sfi_wrapper_shared: Option<u32>,
    /// Source position tables keep the statement flag in the code offset's
    /// low bit (V8 14), not in its sign.
    pub statement_bit_in_offset: bool,
    /// V8's own profiler also expands the inlined functions of the frame
    /// the sampled pc is in (V8 14), not only of frames that called out.
    pub leaf_inlining: bool,
}

impl V8Layout {
    /// Reads the layout from a node (or libnode) ELF binary, e.g. `/proc/PID/exe`.
    pub fn from_binary(path: &Path) -> Result<(V8Layout, LayoutReport), LayoutError> {
        let filter = SymbolFilter {
            prefixes: &[b"v8", b"_ZN2v88internal7Version"],
            keep: &|name| {
                name.starts_with("v8dbg_")
                    || VERSION_SYMBOLS.contains(&name)
                    || [BLOB_CODE, BLOB_CODE_DATA, BLOB_CODE_SIZE].contains(&name)
            },
        };
        let symbols = read_symbols(path, &filter)?;
        build(path, &symbols)
    }

    /// What the eBPF sampler needs to recognise JS frames.
    pub fn probe_config(&self) -> V8ProbeConfig {
        V8ProbeConfig {
            fp_context: self.fp_context,
            fp_function: self.fp_function,
            jsfunction_shared: self.js_function_shared,
            heap_object_map: self.heap_object_map,
            map_instance_type: self.map_instance_type,
            sfi_name_or_scope_info: self.sfi.name_or_scope_info,
            sfi_instance_type: self.types.shared_function_info,
            heap_object_tag: self.heap_object_tag as u8,
            heap_object_tag_mask: self.heap_object_tag_mask as u8,
            _pad: 0,
        }
    }

    /// The name of a typed frame's type (`EntryFrame`, `ExitFrame`,
    /// `InterpretedFrame`…: the `v8dbg_frametype_` suffix) from the raw word at
    /// `[fp + fp_context]`; `None` when the word is not a frame-type marker
    /// (a JS frame's Context) or the type is unknown.
    pub fn frame_type_name(&self, marker: u64) -> Option<&str> {
        if marker & 1 != 0 {
            return None;
        }
        let ty = u32::try_from(marker >> 1).ok()?;
        self.frame_types.get(&ty).map(String::as_str)
    }

    /// The frame type value of a name (`"EntryFrame"`).
    pub fn frame_type(&self, name: &str) -> Option<u32> {
        self.frame_types
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(&t, _)| t)
    }

    pub fn is_heap_object(&self, word: u64) -> bool {
        word & self.heap_object_tag_mask == self.heap_object_tag
    }

    pub fn is_smi(&self, word: u64) -> bool {
        word & self.smi_tag_mask == 0
    }

    /// The value of a 64-bit Smi (value in the upper half).
    pub fn smi_value(&self, word: u64) -> Option<i32> {
        self.is_smi(word).then_some((word >> 32) as u32 as i32)
    }

    /// Address of the object a tagged pointer points to.
    pub fn untag(&self, word: u64) -> u64 {
        word.wrapping_sub(self.heap_object_tag)
    }

    pub fn is_string_type(&self, ty: u16) -> bool {
        ty < self.types.first_nonstring
    }

    pub fn is_js_function_type(&self, ty: u16) -> bool {
        (self.types.js_function_first..=self.types.js_function_last).contains(&ty)
    }
}

// ---------------------------------------------------------------------------
// Building the layout

/// One way to find a value: an exact `v8dbg_` name, or a class field by prefix.
#[derive(Clone, Copy)]
enum Cand {
    Exact(&'static str),
    Field(&'static str, &'static str),
}

struct Builder<'a> {
    syms: &'a Symbols,
    version: V8Version,
    report: LayoutReport,
    required_missing: Vec<&'static str>,
}

impl<'a> Builder<'a> {
    /// The value of the first candidate found; else `fallback`; records the source.
    fn get(
        &mut self,
        name: &'static str,
        cands: &[Cand],
        fallback: Option<(i64, &'static str)>,
        required: bool,
    ) -> Option<i64> {
        for cand in cands {
            let found: Option<(String, i64)> = match *cand {
                Cand::Exact(n) => {
                    let full = format!("v8dbg_{n}");
                    self.syms.int(&full).map(|v| (full, i64::from(v)))
                }
                Cand::Field(class, field) => {
                    let prefix = format!("v8dbg_class_{class}__{field}__");
                    let matches = self.syms.with_prefix(&prefix);
                    let mut values = matches
                        .iter()
                        .filter_map(|(n, s)| s.int.map(|v| (n.to_string(), i64::from(v))));
                    let first = values.next();
                    if let Some((first_name, first_value)) = &first {
                        for (other, v) in values {
                            if v != *first_value {
                                self.report.problems.push(format!(
                                    "{first_name} = {first_value} disagrees with {other} = {v}; using {first_value}"
                                ));
                            }
                        }
                    }
                    first
                }
            };
            if let Some((sym, value)) = found {
                self.report.fields.push(FieldReport {
                    name,
                    value: Some(value),
                    source: FieldSource::Symbol(sym),
                    required,
                });
                return Some(value);
            }
        }
        match fallback {
            Some((value, why)) => {
                self.report.fields.push(FieldReport {
                    name,
                    value: Some(value),
                    source: FieldSource::Fallback(why),
                    required,
                });
                Some(value)
            }
            None => {
                self.report.fields.push(FieldReport {
                    name,
                    value: None,
                    source: FieldSource::Missing,
                    required,
                });
                if required {
                    self.required_missing.push(name);
                }
                None
            }
        }
    }

    /// A required value (0 when missing: the build then fails as Incomplete).
    fn need(
        &mut self,
        name: &'static str,
        cands: &[Cand],
        fallback: Option<(i64, &'static str)>,
    ) -> i64 {
        self.get(name, cands, fallback, true).unwrap_or(0)
    }

    fn opt(
        &mut self,
        name: &'static str,
        cands: &[Cand],
        fallback: Option<(i64, &'static str)>,
    ) -> Option<i64> {
        self.get(name, cands, fallback, false)
    }

    /// A flag decided by V8 version only: recorded as a fallback.
    fn by_version(&mut self, name: &'static str, value: bool, why: &'static str) -> bool {
        self.report.fields.push(FieldReport {
            name,
            value: Some(i64::from(value)),
            source: FieldSource::Fallback(why),
            required: true,
        });
        value
    }

    fn v(&self) -> V8Version {
        self.version
    }
}

use Cand::{Exact, Field};

fn u32_of(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn u16_of(v: i64) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

fn build(path: &Path, syms: &Symbols) -> Result<(V8Layout, LayoutReport), LayoutError> {
    let v8dbg: Vec<&Sym> = syms
        .map
        .iter()
        .filter(|(n, _)| n.starts_with("v8dbg_"))
        .map(|(_, s)| s)
        .collect();
    if v8dbg.is_empty() {
        return Err(LayoutError::NoV8Symbols {
            path: path.to_path_buf(),
        });
    }
    let mut report = LayoutReport {
        path: path.to_path_buf(),
        v8dbg_symbols: v8dbg.len(),
        symtab_only: v8dbg.iter().filter(|s| !s.in_dynsym).count(),
        ..LayoutReport::default()
    };
    let version = match v8_version(syms) {
        Some(version) => version,
        None => {
            report
                .problems
                .push("no V8 version symbols (v8::internal::Version::major_…)".to_string());
            report.naming_available = false;
            return Err(LayoutError::Incomplete {
                path: path.to_path_buf(),
                report: Box::new(report),
            });
        }
    };
    report.v8_version = Some(version);
    if version < VERIFIED_V8_OLDEST || version > VERIFIED_V8_NEWEST {
        report.problems.push(format!(
            "V8 {version} is outside the verified range {}–14.6 (node 18–26): fallback values are extrapolated",
            "10.2"
        ));
    }
    let mut b = Builder {
        syms,
        version,
        report,
        required_missing: Vec::new(),
    };
    let v = b.v();
    let ge12 = v.at_least(12, 0, 0);
    // ScopeInfo rework (fixed position_info, u32 flags, reordered ScopeType): 12.8.44.
    let si_new = v.at_least(12, 8, 44);

    // Tagging: node ships without pointer compression (8-byte tagged values,
    // Smi value in the upper half).
    let heap_object_tag = b.need("HeapObjectTag", &[Exact("HeapObjectTag")], None);
    let heap_object_tag_mask = b.need("HeapObjectTagMask", &[Exact("HeapObjectTagMask")], None);
    let smi_tag = b.need("SmiTag", &[Exact("SmiTag")], None);
    let smi_tag_mask = b.need("SmiTagMask", &[Exact("SmiTagMask")], None);
    let smi_shift = b.need("SmiShiftSize", &[Exact("SmiShiftSize")], None);
    let smi_value_shift = b.opt(
        "SmiValueShift",
        &[Exact("SmiValueShift")],
        Some((1, "kSmiTagSize, 1 in every V8")),
    );
    let tagged_size = b.need(
        "TaggedSize",
        &[Exact("TaggedSize")],
        Some((8, "no pointer compression")),
    );
    if heap_object_tag != 1 || heap_object_tag_mask != 3 || smi_tag != 0 || smi_tag_mask != 1 {
        b.report.problems.push(format!(
            "unexpected tagging: HeapObjectTag {heap_object_tag}/{heap_object_tag_mask}, SmiTag {smi_tag}/{smi_tag_mask}"
        ));
        b.required_missing.push("tagging");
    }
    if tagged_size != 8 || smi_shift != 31 || smi_value_shift.is_some_and(|s| s != 1) {
        b.report.problems.push(format!(
            "pointer compression or 31-bit Smis (TaggedSize {tagged_size}, SmiShiftSize {smi_shift}) are not supported"
        ));
        b.required_missing.push("tagging");
    }

    let fp_context = b.need(
        "fp.context_or_frame_type",
        &[
            Exact("off_fp_context_or_frame_type"),
            Exact("off_fp_context"),
        ],
        None,
    );
    let fp_function = b.need("fp.function", &[Exact("off_fp_function")], None);
    let fp_bytecode_array = b
        .opt("fp.bytecode_array", &[Exact("off_fp_bytecode_array")], None)
        .unwrap_or(-32);
    let fp_bytecode_offset = b
        .opt(
            "fp.bytecode_offset",
            &[Exact("off_fp_bytecode_offset")],
            None,
        )
        .unwrap_or(-40);

    let heap_object_map = b.need("HeapObject.map", &[Field("HeapObject", "map")], None);
    let map_instance_type = b.need("Map.instance_type", &[Field("Map", "instance_type")], None);
    let js_function_shared = b.need("JSFunction.shared", &[Field("JSFunction", "shared")], None);

    // Instance types.
    let sfi_type = b.need(
        "type SharedFunctionInfo",
        &[Exact("type_SharedFunctionInfo__SHARED_FUNCTION_INFO_TYPE")],
        None,
    );
    let jsf_type = b.need(
        "type JSFunction",
        &[Exact("type_JSFunction__JS_FUNCTION_TYPE")],
        None,
    );
    let jsf_first = b.need(
        "FirstJSFunctionType",
        &[Exact("FirstJSFunctionType")],
        Some((
            jsf_type,
            "JS_FUNCTION_TYPE (first of the JSFunction range, V8 < 12)",
        )),
    );
    let jsf_last = b.need(
        "LastJSFunctionType",
        &[Exact("LastJSFunctionType")],
        Some((
            jsf_type + 15,
            "JS_FUNCTION_TYPE + 15 (class constructors are +15 on V8 10.2/11.3)",
        )),
    );
    let scope_info_type = b.need(
        "type ScopeInfo",
        &[Exact("type_ScopeInfo__SCOPE_INFO_TYPE")],
        None,
    );
    let script_type = b.need("type Script", &[Exact("type_Script__SCRIPT_TYPE")], None);
    let debug_info_type = b.opt(
        "type DebugInfo",
        &[Exact("type_DebugInfo__DEBUG_INFO_TYPE")],
        None,
    );
    let fixed_array_type = b.need(
        "type FixedArray",
        &[Exact("type_FixedArray__FIXED_ARRAY_TYPE")],
        None,
    );
    let oddball_type = b.opt("type Oddball", &[Exact("type_Oddball__ODDBALL_TYPE")], None);
    let first_nonstring = b.need(
        "FirstNonstringType",
        &[Exact("FirstNonstringType")],
        Some((128, "kIsNotStringMask 0xff80")),
    );
    let mut uncompiled: Vec<u16> = syms
        .with_prefix("v8dbg_type_UncompiledData")
        .iter()
        .filter_map(|(_, s)| s.int)
        .map(i64::from)
        .map(u16_of)
        .collect();
    uncompiled.sort_unstable();
    uncompiled.dedup();
    b.report.fields.push(FieldReport {
        name: "types UncompiledData*",
        value: Some(uncompiled.len() as i64),
        source: if uncompiled.is_empty() {
            FieldSource::Missing
        } else {
            FieldSource::Symbol("v8dbg_type_UncompiledData*".to_string())
        },
        required: false,
    });

    // Strings.
    let st = StringLayout {
        length: u32_of(b.need("String.length", &[Field("String", "length")], None)),
        seq_one_byte_chars: u32_of(b.need(
            "SeqOneByteString.chars",
            &[Field("SeqOneByteString", "chars")],
            None,
        )),
        seq_two_byte_chars: u32_of(b.need(
            "SeqTwoByteString.chars",
            &[Field("SeqTwoByteString", "chars")],
            None,
        )),
        cons_first: u32_of(b.need("ConsString.first", &[Field("ConsString", "first")], None)),
        cons_second: u32_of(b.need("ConsString.second", &[Field("ConsString", "second")], None)),
        sliced_parent: u32_of(b.need(
            "SlicedString.parent",
            &[Field("SlicedString", "parent")],
            None,
        )),
        sliced_offset: u32_of(b.need(
            "SlicedString.offset",
            &[Field("SlicedString", "offset")],
            None,
        )),
        thin_actual: u32_of(b.need("ThinString.actual", &[Field("ThinString", "actual")], None)),
        external_resource: u32_of(b.need(
            "ExternalString.resource",
            &[Field("ExternalString", "resource")],
            None,
        )),
        external_data: 0,
        representation_mask: u16_of(b.need(
            "StringRepresentationMask",
            &[Exact("StringRepresentationMask")],
            Some((7, "stable since V8 6")),
        )),
        encoding_mask: u16_of(b.need(
            "StringEncodingMask",
            &[Exact("StringEncodingMask")],
            Some((8, "stable since V8 6")),
        )),
        one_byte_tag: u16_of(b.need(
            "OneByteStringTag",
            &[Exact("OneByteStringTag")],
            Some((8, "stable since V8 6")),
        )),
        seq_tag: u16_of(b.need(
            "SeqStringTag",
            &[Exact("SeqStringTag")],
            Some((0, "stable since V8 6")),
        )),
        cons_tag: u16_of(b.need(
            "ConsStringTag",
            &[Exact("ConsStringTag")],
            Some((1, "stable since V8 6")),
        )),
        external_tag: u16_of(b.need(
            "ExternalStringTag",
            &[Exact("ExternalStringTag")],
            Some((2, "stable since V8 6")),
        )),
        sliced_tag: u16_of(b.need(
            "SlicedStringTag",
            &[Exact("SlicedStringTag")],
            Some((3, "stable since V8 6")),
        )),
        thin_tag: u16_of(b.need(
            "ThinStringTag",
            &[Exact("ThinStringTag")],
            Some((5, "stable since V8 6")),
        )),
        uncached_external_mask: 0x10,
    };
    let mut st = st;
    st.external_data = u32_of(b.need(
        "ExternalString.resource_data",
        &[Field("ExternalString", "resource_data")],
        Some((
            i64::from(st.external_resource) + 8,
            "resource + 8 (cached data pointer, V8 10.2–14.6)",
        )),
    ));
    // Uncached external strings carry kUncachedExternalStringMask (1 << 4).
    let uncached: Vec<i32> = syms
        .with_prefix("v8dbg_type_UncachedExternalString")
        .iter()
        .filter_map(|(_, s)| s.int)
        .collect();
    let uncached_source = if !uncached.is_empty() && uncached.iter().all(|t| t & 0x10 != 0) {
        FieldSource::Symbol("v8dbg_type_UncachedExternalString*".to_string())
    } else {
        FieldSource::Fallback("kUncachedExternalStringMask 1 << 4 (V8 ≥ 6)")
    };
    b.report.fields.push(FieldReport {
        name: "UncachedExternalStringMask",
        value: Some(0x10),
        source: uncached_source,
        required: false,
    });

    // SharedFunctionInfo.
    let sfi = SfiLayout {
        function_data: u32_of(b.need(
            "SharedFunctionInfo.function_data",
            &[
                Field("SharedFunctionInfo", "function_data"),
                Field("SharedFunctionInfo", "trusted_function_data"),
            ],
            Some((8, "not exported since V8 12; 8 on 12.4/13.6/14.6")),
        )),
        name_or_scope_info: u32_of(b.need(
            "SharedFunctionInfo.name_or_scope_info",
            &[Field("SharedFunctionInfo", "name_or_scope_info")],
            Some(if v.at_least(13, 0, 0) {
                (24, "24 on V8 13.6/14.6 (leaptiering layout)")
            } else {
                (16, "16 on V8 10.2–12.4")
            }),
        )),
        script_or_debug_info: u32_of(b.need(
            "SharedFunctionInfo.script",
            &[
                Field("SharedFunctionInfo", "script_or_debug_info"),
                Field("SharedFunctionInfo", "script"),
                Field("SharedFunctionInfo", "raw_script"),
            ],
            Some(if v.at_least(13, 0, 0) {
                (40, "40 on V8 13.6/14.6")
            } else {
                (32, "32 on V8 10.2–12.4")
            }),
        )),
    };
    let uncompiled_layout = UncompiledDataLayout {
        inferred_name: u32_of(
            b.opt(
                "UncompiledData.inferred_name",
                &[Field("UncompiledData", "inferred_name")],
                Some((8, "8 on V8 10.2–14.6")),
            )
            .unwrap_or(8),
        ),
        start_position: u32_of(
            b.opt(
                "UncompiledData.start_position",
                &[Field("UncompiledData", "start_position")],
                Some((16, "16 on V8 10.2–14.6")),
            )
            .unwrap_or(16),
        ),
    };

    // Script.
    let script_name = b.need("Script.name", &[Field("Script", "name")], None);
    let script_line_ends = b.need("Script.line_ends", &[Field("Script", "line_ends")], None);
    let script = ScriptLayout {
        source: u32_of(b.need("Script.source", &[Field("Script", "source")], None)),
        name: u32_of(script_name),
        line_offset: u32_of(b.need(
            "Script.line_offset",
            &[Field("Script", "line_offset")],
            Some((24, "Smi after name, 24 on V8 10.2–14.6")),
        )),
        column_offset: u32_of(b.need(
            "Script.column_offset",
            &[Field("Script", "column_offset")],
            Some((32, "Smi after line_offset, 32 on V8 10.2–14.6")),
        )),
        line_ends: u32_of(script_line_ends),
        id: u32_of(b.need(
            "Script.id",
            &[Field("Script", "id")],
            Some((64, "Smi after line_ends, 64 on V8 10.2–14.6")),
        )),
    };
    // V8 < 12 keeps a DebugInfo (with the script at +24) in the SFI's script
    // slot while a debugger or block coverage is active.
    let debug_info_script = if ge12 {
        None
    } else {
        b.opt(
            "DebugInfo.script",
            &[Field("DebugInfo", "script")],
            Some((24, "24 on V8 10.2/11.3")),
        )
        .map(u32_of)
    };
    let fixed_array_length = u32_of(b.need(
        "FixedArrayBase.length",
        &[Field("FixedArrayBase", "length")],
        Some((8, "8 on V8 10.2–14.6")),
    ));
    let fixed_array_data = u32_of(b.need(
        "FixedArray.data",
        &[Field("FixedArray", "data")],
        Some((16, "16 on V8 10.2–14.6")),
    ));

    // ScopeInfo.
    let first_vars_fallback = if si_new {
        (5, "5 on V8 ≥ 12.8.44")
    } else {
        (3, "3 on V8 < 12.8.44")
    };
    let scope_info = ScopeInfoLayout {
        flags_idx: 0,
        context_local_count_idx: u32_of(b.need(
            "ScopeInfo.context_local_count index",
            &[Exact("scopeinfo_idx_ncontextlocals")],
            Some((2, "2 on V8 10.2–14.6")),
        )),
        first_vars: u32_of(b.need(
            "ScopeInfo.first_vars index",
            &[Exact("scopeinfo_idx_first_vars")],
            Some(first_vars_fallback),
        )),
        flags_raw_u32: b.by_version(
            "ScopeInfo.flags is raw u32",
            si_new,
            "raw u32 on V8 ≥ 12.8.44, Smi before",
        ),
        fixed_position_info: b.by_version(
            "ScopeInfo.position_info at slots 3/4",
            si_new,
            "fixed slots on V8 ≥ 12.8.44, after the variable part before",
        ),
        module_variable_count_slot: b.by_version(
            "ScopeInfo.module_variable_count before names",
            ge12,
            "present on V8 ≥ 12.0",
        ),
        scope_type_mask: 0xf,
        function_scope: if si_new { 4 } else { 2 },
        module_scope: if si_new { 5 } else { 3 },
        script_scope: if si_new { 0 } else { 4 },
        eval_scope: if si_new { 3 } else { 1 },
        has_saved_class_variable_bit: 10,
        function_variable_shift: 12,
        function_variable_mask: 3,
        has_inferred_function_name_bit: 14,
        max_inlined_local_names: 75,
    };
    b.report.fields.push(FieldReport {
        name: "ScopeType numbering",
        value: Some(i64::from(scope_info.function_scope)),
        source: FieldSource::Fallback(if si_new {
            "FUNCTION=4 MODULE=5 on V8 ≥ 12.8.44"
        } else {
            "FUNCTION=2 MODULE=3 on V8 < 12.8.44"
        }),
        required: true,
    });
    if scope_info.fixed_position_info && scope_info.first_vars < 5 {
        b.report.problems.push(format!(
            "ScopeInfo first_vars = {} but V8 {v} should have fixed position slots: positions may be wrong",
            scope_info.first_vars
        ));
    }

    // Frame types.
    let mut frame_types = BTreeMap::new();
    for (name, sym) in syms.with_prefix("v8dbg_frametype_") {
        if let Some(value) = sym.int.and_then(|v| u32::try_from(v).ok()) {
            frame_types
                .entry(value)
                .or_insert_with(|| name["v8dbg_frametype_".len()..].to_string());
        }
    }
    b.report.frame_types = frame_types.len();
    if frame_types.is_empty() {
        b.report
            .problems
            .push("no v8dbg_frametype_* symbols: typed V8 frames stay unnamed".to_string());
    }

    let embedded_blob = embedded_blob(syms);
    if embedded_blob.is_none() {
        b.report
            .problems
            .push("embedded builtins blob not found (v8_Default_embedded_blob_code_)".to_string());
    }
    b.report.embedded_blob = embedded_blob;

    let code = code_layout(&mut b);

    let mut report = b.report;
    if !b.required_missing.is_empty() {
        let mut missing = b.required_missing.clone();
        missing.dedup();
        report.problems.insert(
            0,
            format!("required layout values missing: {}", missing.join(", ")),
        );
        report.naming_available = false;
        return Err(LayoutError::Incomplete {
            path: path.to_path_buf(),
            report: Box::new(report),
        });
    }
    report.naming_available = true;

    let layout = V8Layout {
        version,
        heap_object_tag: heap_object_tag as u64,
        heap_object_tag_mask: heap_object_tag_mask as u64,
        smi_tag_mask: smi_tag_mask as u64,
        fp_context: fp_context as i32,
        fp_function: fp_function as i32,
        fp_bytecode_array: fp_bytecode_array as i32,
        fp_bytecode_offset: fp_bytecode_offset as i32,
        heap_object_map: u32_of(heap_object_map),
        map_instance_type: u32_of(map_instance_type),
        js_function_shared: u32_of(js_function_shared),
        types: InstanceTypes {
            shared_function_info: u16_of(sfi_type),
            js_function_first: u16_of(jsf_first),
            js_function_last: u16_of(jsf_last),
            scope_info: u16_of(scope_info_type),
            script: u16_of(script_type),
            debug_info: if ge12 {
                None
            } else {
                debug_info_type.map(u16_of)
            },
            fixed_array: u16_of(fixed_array_type),
            oddball: oddball_type.map(u16_of),
            uncompiled_data: uncompiled,
            first_nonstring: u16_of(first_nonstring),
        },
        strings: st,
        sfi,
        uncompiled: uncompiled_layout,
        script,
        debug_info_script,
        fixed_array_length,
        fixed_array_data,
        scope_info,
        frame_types,
        embedded_blob,
        code,
    };
    Ok((layout, report))
}

/// The layout of optimized code, verified against live node 18–26
/// processes (objects dumped around a TurboFan function's instructions).
fn code_layout(b: &mut Builder) -> Option<CodeLayout> {
    let v = b.v();
    let v11 = v.at_least(11, 0, 0);
    let v12 = v.at_least(12, 0, 0);
    let v13 = v.at_least(13, 0, 0);
    let code_type = b.opt("type Code", &[Exact("type_Code__CODE_TYPE")], None);
    let istream_type = b.opt(
        "type InstructionStream",
        &[Exact("type_InstructionStream__INSTRUCTION_STREAM_TYPE")],
        None,
    );
    let (container_type, container_instructions, container_code) = match istream_type {
        Some(ty) => (
            ty,
            b.opt(
                "InstructionStream.instruction_start",
                &[Field("InstructionStream", "instruction_start")],
                None,
            ),
            b.opt(
                "InstructionStream.code",
                &[Field("InstructionStream", "code")],
                Some((8, "first field after the map, V8 11.3–14.6")),
            ),
        ),
        None => (
            code_type?,
            b.opt(
                "Code.instruction_start (header size)",
                &[Field("Code", "instruction_start")],
                None,
            ),
            None,
        ),
    };
    let (code_instruction_stream, code_instruction_start) = if istream_type.is_some() {
        (
            b.opt(
                "Code.instruction_stream",
                &[Field("Code", "instruction_stream")],
                Some((32, "32 on V8 11.3–14.6")),
            ),
            b.opt(
                "Code.instruction_start",
                &[Field("Code", "instruction_start")],
                Some((40, "40 on V8 11.3–14.6")),
            ),
        )
    } else {
        (None, None)
    };
    let code_instruction_size = b.opt(
        "Code.instruction_size",
        &[Field("Code", "instruction_size")],
        Some((56, "56 on V8 11.3")),
    );
    let code_flags = b.opt(
        "Code.flags",
        &[Field("Code", "flags")],
        Some((48, "48 on V8 11.3")),
    );
    let kind_mask = b.opt(
        "CodeKindFieldMask",
        &[Exact("CodeKindFieldMask")],
        Some((0xf, "low 4 bits of the flags, V8 10.2–14.6")),
    );
    let kind_shift = b.opt(
        "CodeKindFieldShift",
        &[Exact("CodeKindFieldShift")],
        Some((0, "V8 10.2–14.6")),
    );
    let baseline = b.opt("CodeKindBaseline", &[Exact("CodeKindBaseline")], None);
    let (deopt, positions) = if v12 {
        ((8, "8 on V8 12.4–14.6"), (16, "16 on V8 12.4–14.6"))
    } else {
        ((16, "16 on V8 10.2/11.3"), (24, "24 on V8 10.2/11.3"))
    };
    let code_deoptimization_data = b.opt(
        "Code.deoptimization_data",
        &[Field("Code", "deoptimization_data")],
        Some(deopt),
    );
    let code_source_position_table = b.opt(
        "Code.source_position_table",
        &[Field("Code", "source_position_table")],
        Some(positions),
    );
    let deopt_inlined_function_count = b.opt(
        "DeoptimizationData inlined function count index",
        &[Exact("DeoptimizationDataInlinedFunctionCountIndex")],
        Some((1, "1 on V8 10.2–14.6")),
    );
    let deopt_literal_array = b.opt(
        "DeoptimizationData literal array index",
        &[Exact("DeoptimizationDataLiteralArrayIndex")],
        Some(if v13 {
            (3, "3 on V8 13.6/14.6")
        } else {
            (2, "2 on V8 10.2–12.4")
        }),
    );
    let deopt_inlining_positions = b.opt(
        "DeoptimizationData inlining positions index",
        &[Exact("DeoptimizationDataInliningPositionsIndex")],
        Some(if v13 {
            (8, "8 on V8 13.6/14.6")
        } else {
            (7, "7 on V8 10.2–12.4")
        }),
    );
    let wrapped = if v13 {
        b.opt(
            "DeoptimizationData wrapped SFI index",
            &[Exact("DeoptimizationDataWrappedSharedFunctionInfoIndex")],
            None,
        )
    } else {
        None
    };
    let (deopt_shared_function_info, sfi_wrapper_shared) = match wrapped {
        Some(index) => (
            Some(index),
            b.opt(
                "SharedFunctionInfoWrapper.shared_info",
                &[Field("SharedFunctionInfoWrapper", "shared_info")],
                Some((8, "8 on V8 13.6/14.6")),
            ),
        ),
        None => (
            b.opt(
                "DeoptimizationData SFI index",
                &[Exact("DeoptimizationDataSharedFunctionInfoIndex")],
                Some((6, "6 on V8 10.2–12.4")),
            ),
            None,
        ),
    };
    let statement_bit_in_offset = b.by_version(
        "source positions: statement flag in the offset's low bit",
        v.at_least(14, 0, 0),
        "low bit on V8 14.6 (node 26), sign on V8 10.2–13.6",
    );
    let leaf_inlining = b.by_version(
        "profiler expands inlining at the sampled pc",
        v.at_least(14, 0, 0),
        "as node --cpu-prof: yes on V8 14.6 (node 26), no on V8 10.2–13.6",
    );
    let layout = (|| {
        let baseline = u32_of(baseline?);
        Some(CodeLayout {
            container_type: u16_of(container_type),
            container_instructions: u32_of(container_instructions?),
            container_code: container_code.map(u32_of),
            code_type: u16_of(code_type?),
            code_instruction_stream: code_instruction_stream.map(u32_of),
            code_instruction_start: code_instruction_start.map(u32_of),
            code_instruction_size: u32_of(code_instruction_size?),
            code_flags: u32_of(code_flags?),
            code_kind_mask: u32_of(kind_mask?),
            code_kind_shift: u32_of(kind_shift?),
            // CodeKind: … INTERPRETED_FUNCTION, BASELINE, MAGLEV, TURBOFAN.
            optimized_kinds: [baseline + 1, baseline + 2],
            code_deoptimization_data: u32_of(code_deoptimization_data?),
            code_source_position_table: u32_of(code_source_position_table?),
            deopt_inlined_function_count: u32_of(deopt_inlined_function_count?),
            deopt_literal_array: u32_of(deopt_literal_array?),
            deopt_inlining_positions: u32_of(deopt_inlining_positions?),
            deopt_shared_function_info: u32_of(deopt_shared_function_info?),
            sfi_wrapper_shared: match wrapped {
                Some(_) => Some(u32_of(sfi_wrapper_shared?)),
                None => None,
            },
            statement_bit_in_offset,
            leaf_inlining,
        })
    })();
    if layout.is_none() || (v11 && istream_type.is_none()) {
        b.report.problems.push(
            "optimized code layout incomplete: inlined functions are charged to their caller"
                .to_string(),
        );
        return None;
    }
    layout
}

fn embedded_blob(syms: &Symbols) -> Option<EmbeddedBlob> {
    let size = syms
        .get(BLOB_CODE_SIZE)?
        .int
        .and_then(|s| u64::try_from(s).ok())
        .filter(|&s| s > 0)?;
    // Node 18: `…_code_` is a data pointer to the text label `…_code_data_`;
    // 20+: `…_code_` is the text label itself.
    let code = [BLOB_CODE_DATA, BLOB_CODE]
        .iter()
        .filter_map(|n| syms.get(n))
        .find(|s| s.executable)?;
    Some(EmbeddedBlob {
        vaddr: code.address,
        size,
        file_offset: code.file_offset?,
    })
}

/// Node 20's layout (V8 11.3), written out, for unit tests of decoding
/// logic on fake memory (checked against the real binary in the tests).
#[cfg(test)]
pub(crate) fn test_layout() -> V8Layout {
    V8Layout {
        version: V8Version::new(11, 3, 244, 8),
        heap_object_tag: 1,
        heap_object_tag_mask: 3,
        smi_tag_mask: 1,
        fp_context: -8,
        fp_function: -16,
        fp_bytecode_array: -32,
        fp_bytecode_offset: -40,
        heap_object_map: 0,
        map_instance_type: 12,
        js_function_shared: 24,
        types: InstanceTypes {
            shared_function_info: 262,
            js_function_first: 2066,
            js_function_last: 2081,
            scope_info: 261,
            script: 167,
            debug_info: Some(153),
            fixed_array: 175,
            oddball: Some(131),
            uncompiled_data: vec![220, 221, 222, 223],
            first_nonstring: 128,
        },
        strings: StringLayout {
            length: 12,
            seq_one_byte_chars: 16,
            seq_two_byte_chars: 16,
            cons_first: 16,
            cons_second: 24,
            sliced_parent: 16,
            sliced_offset: 24,
            thin_actual: 16,
            external_resource: 16,
            external_data: 24,
            representation_mask: 7,
            encoding_mask: 8,
            one_byte_tag: 8,
            seq_tag: 0,
            cons_tag: 1,
            external_tag: 2,
            sliced_tag: 3,
            thin_tag: 5,
            uncached_external_mask: 0x10,
        },
        sfi: SfiLayout {
            function_data: 8,
            name_or_scope_info: 16,
            script_or_debug_info: 32,
        },
        uncompiled: UncompiledDataLayout {
            inferred_name: 8,
            start_position: 16,
        },
        script: ScriptLayout {
            source: 8,
            name: 16,
            line_offset: 24,
            column_offset: 32,
            line_ends: 56,
            id: 64,
        },
        debug_info_script: Some(24),
        fixed_array_length: 8,
        fixed_array_data: 16,
        scope_info: ScopeInfoLayout {
            flags_idx: 0,
            context_local_count_idx: 2,
            first_vars: 3,
            flags_raw_u32: false,
            fixed_position_info: false,
            module_variable_count_slot: false,
            scope_type_mask: 0xf,
            function_scope: 2,
            module_scope: 3,
            script_scope: 4,
            eval_scope: 1,
            has_saved_class_variable_bit: 10,
            function_variable_shift: 12,
            function_variable_mask: 3,
            has_inferred_function_name_bit: 14,
            max_inlined_local_names: 75,
        },
        frame_types: [
            (1, "EntryFrame"),
            (3, "ExitFrame"),
            (13, "InterpretedFrame"),
        ]
        .into_iter()
        .map(|(t, n)| (t, n.to_string()))
        .collect(),
        embedded_blob: None,
        code: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::v8::live_tests::node_binary;

    fn layout(major: u32) -> (V8Layout, LayoutReport) {
        let path = node_binary(major);
        V8Layout::from_binary(&path).unwrap_or_else(|e| panic!("node {major}: {e}"))
    }

    #[test]
    fn layouts_of_every_node_major() {
        // (node major, V8 major, SFI type, name_or_scope_info, script, JSFunction.shared, first_vars)
        let expected = [
            (18, 10, 257, 16, 32, 24, 3),
            (20, 11, 262, 16, 32, 24, 3),
            (22, 12, 274, 16, 32, 32, 3),
            (24, 13, 282, 24, 40, 32, 5),
            (26, 14, 288, 24, 40, 32, 5),
        ];
        for (major, v8_major, sfi_type, nosi, script, shared, first_vars) in expected {
            let (l, r) = layout(major);
            assert_eq!(l.version.major, v8_major, "node {major}");
            assert!(r.naming_available, "node {major}: {:?}", r.problems);
            assert!(r.missing().all(|f| !f.required), "node {major}");
            assert_eq!(l.types.shared_function_info, sfi_type, "node {major}");
            assert_eq!(l.sfi.name_or_scope_info, nosi, "node {major}");
            assert_eq!(l.sfi.script_or_debug_info, script, "node {major}");
            assert_eq!(l.js_function_shared, shared, "node {major}");
            assert_eq!(l.scope_info.first_vars, first_vars, "node {major}");
            assert_eq!((l.fp_context, l.fp_function), (-8, -16), "node {major}");
            assert_eq!(
                (l.heap_object_map, l.map_instance_type),
                (0, 12),
                "node {major}"
            );
            assert_eq!(l.script.id, 64, "node {major}");
            assert_eq!(l.strings.external_data, 24, "node {major}");
            assert_eq!(l.strings.seq_tag, 0, "node {major}: .bss symbol means 0");
            assert!(!l.types.uncompiled_data.is_empty(), "node {major}");
            assert_eq!(l.frame_type_name(2), Some("EntryFrame"), "node {major}");
            assert_eq!(l.frame_type_name(6), Some("ExitFrame"), "node {major}");
            assert_eq!(
                l.frame_type_name(7),
                None,
                "node {major}: a Context is not a marker"
            );
            let blob = l.embedded_blob.expect("embedded blob");
            assert!(
                blob.size > 1 << 20 && blob.file_offset > 0,
                "node {major}: {blob:?}"
            );
            let cfg = l.probe_config();
            assert_eq!(cfg.sfi_instance_type, sfi_type);
            assert_eq!(cfg.sfi_name_or_scope_info, nosi);
            assert_eq!((cfg.heap_object_tag, cfg.heap_object_tag_mask), (1, 3));
            // Fallbacks are keyed by V8 version only.
            let fallback = |name: &str| {
                matches!(
                    r.field(name).map(|f| &f.source),
                    Some(FieldSource::Fallback(_))
                )
            };
            assert!(fallback("Script.id"), "node {major}");
            assert_eq!(fallback("FirstJSFunctionType"), major < 22, "node {major}");
            assert_eq!(
                fallback("SharedFunctionInfo.function_data"),
                major >= 22,
                "node {major}"
            );
            assert!(
                !fallback("SharedFunctionInfo.name_or_scope_info"),
                "node {major}"
            );
        }
    }

    #[test]
    fn report_prints() {
        for major in [18, 26] {
            let (_, r) = layout(major);
            let text = r.to_string();
            eprintln!("{text}");
            assert!(text.contains("JS frame naming: available"), "{text}");
            assert!(
                text.contains("Script.id") && text.contains("fallback ("),
                "{text}"
            );
        }
    }

    #[test]
    fn test_layout_is_node20() {
        let (real, _) = layout(20);
        let fake = test_layout();
        assert_eq!(real.version.major, fake.version.major);
        assert_eq!(real.types, fake.types);
        assert_eq!(real.strings, fake.strings);
        assert_eq!(real.sfi, fake.sfi);
        assert_eq!(real.uncompiled, fake.uncompiled);
        assert_eq!(real.script, fake.script);
        assert_eq!(real.scope_info, fake.scope_info);
        assert_eq!(real.probe_config(), fake.probe_config());
        assert_eq!(
            (
                real.debug_info_script,
                real.fixed_array_length,
                real.fixed_array_data
            ),
            (Some(24), 8, 16)
        );
    }

    #[test]
    fn frame_types_are_renumbered_per_major() {
        for (major, interpreted, turbofan) in [
            (18, 12, "OptimizedFrame"),
            (20, 13, "TurbofanFrame"),
            (22, 13, "TurbofanFrame"),
            (24, 14, "TurbofanJSFrame"),
            (26, 4, "TurbofanJSFrame"),
        ] {
            let (l, _) = layout(major);
            assert_eq!(
                l.frame_type_name(interpreted << 1),
                Some("InterpretedFrame"),
                "node {major}"
            );
            assert!(l.frame_type(turbofan).is_some(), "node {major}");
            assert_eq!(l.frame_type_name((interpreted << 1) | 1), None);
            assert_eq!(l.frame_type_name(u64::MAX - 1), None);
        }
        let (l26, _) = layout(26);
        assert_eq!(l26.frame_type_name(23 << 1), Some("IrregexpFrame"));
    }

    #[test]
    fn not_a_v8_binary() {
        let err = V8Layout::from_binary(Path::new("/bin/sh")).unwrap_err();
        assert!(matches!(err, LayoutError::NoV8Symbols { .. }), "{err}");
        let err = V8Layout::from_binary(Path::new("/nonexistent/node")).unwrap_err();
        assert!(
            matches!(err, LayoutError::Elf(ElfError::Open { .. })),
            "{err}"
        );
        let junk = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(junk.path(), b"not an ELF file at all").unwrap();
        let err = V8Layout::from_binary(junk.path()).unwrap_err();
        assert!(
            matches!(err, LayoutError::Elf(ElfError::Parse { .. })),
            "{err}"
        );
    }
}
