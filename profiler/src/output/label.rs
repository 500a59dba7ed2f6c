//! Short frame labels for places with little room (flame graph boxes):
//! JS function first with the script's file name, C++ without argument
//! lists, template arguments and return types. The full name stays in the
//! tooltip, the folded file, the `.cpuprofile` and pprof's system name.

use super::frame_label;
use crate::profile::{Frame, FrameKind};

/// `fibonacci workload.js:61` for JS; `v8::internal::Execution::Call` for
/// `v8::internal::Execution::Call(v8::internal::Isolate*, …)`; the full
/// label otherwise.
pub fn short_label(frame: &Frame) -> String {
    match frame.kind {
        FrameKind::Js if !frame.location.is_empty() => {
            let name = if frame.name.is_empty() {
                "(anonymous)"
            } else {
                frame.name.as_str()
            };
            // node's own modules (`node:internal/fs/utils`) are short already.
            let file = if frame.location.starts_with("node:") {
                frame.location.as_str()
            } else {
                frame
                    .location
                    .trim_end_matches('/')
                    .rsplit('/')
                    .next()
                    .unwrap_or(&frame.location)
            };
            let label = match frame.line {
                Some(line) => format!("{name} {file}:{}", line + 1),
                None => format!("{name} {file}"),
            };
            label.replace(['\n', '\r'], "")
        }
        FrameKind::Native | FrameKind::Kernel => short_native_name(&frame_label(frame)),
        _ => frame_label(frame),
    }
}

/// A demangled C++ name without argument lists, template arguments, return
/// type, `const` qualifiers, ABI tags and `[clone …]` suffixes; lambdas keep
/// their number (`{lambda#1}`). Names that are not C++ come back as they are.
pub fn short_native_name(name: &str) -> String {
    let mut name = name.trim();
    // GCC's clone suffixes: ` [clone .cold]`, ` [clone .isra.0]`.
    while let Some(at) = name.rfind(" [clone ") {
        if !name.ends_with(']') {
            break;
        }
        name = name[..at].trim_end();
    }
    // Only C++ has scopes or parameter lists; a C or placeholder name
    // (`[unknown] 0x…`) is left alone.
    if !name.contains("::") && !name.contains('(') {
        return name.to_string();
    }
    let name = name.replace("[abi:cxx11]", "");
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let at_word_start = out.is_empty() || out.ends_with(':') || out.ends_with(' ');
        if at_word_start && starts_with(&chars, i, "operator") && is_operator(&chars, i + 8) {
            // The operator's symbol is its name, not brackets: `operator()`,
            // `operator<<`, `operator new[]`.
            i += 8;
            out.push_str("operator");
            if starts_with(&chars, i, "()") {
                out.push_str("()");
                i += 2;
            }
            while i < chars.len() && chars[i] != '(' {
                out.push(chars[i]);
                i += 1;
            }
            continue;
        }
        match c {
            '<' => i = skip_group(&chars, i),
            '(' if starts_with(&chars, i, "(anonymous namespace)") => {
                out.push_str("(anonymous namespace)");
                i += "(anonymous namespace)".len();
            }
            '(' => {
                i = skip_group(&chars, i);
                // The parameters of the function itself: what follows is
                // `const`, `&&` or nothing a reader needs.
                if !rest_has_scope(&chars, i) {
                    break;
                }
                // An enclosing function's qualifiers before its scope
                // (`Bar() const::{lambda()#1}`): not a return type.
                loop {
                    if starts_with(&chars, i, " ") || starts_with(&chars, i, "&") {
                        i += 1;
                    } else if starts_with(&chars, i, "const") {
                        i += "const".len();
                    } else if starts_with(&chars, i, "volatile") {
                        i += "volatile".len();
                    } else {
                        break;
                    }
                }
            }
            '{' => {
                // `{lambda(int)#1}`: keep the kind and number, drop the parameters.
                let end = skip_group(&chars, i);
                let inner: String = chars[i..end].iter().collect();
                out.push_str(&without_groups(&inner));
                i = end;
            }
            // A space outside brackets ends a return type (`void v8::…`).
            ' ' => {
                out.clear();
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    let out = out.trim().to_string();
    // Nothing left, or only a member without its type (Rust's
    // `<Vec<T> as Drop>::drop`): the full name says more.
    if out.is_empty() || out.starts_with("::") {
        name.trim().to_string()
    } else {
        out
    }
}

fn starts_with(chars: &[char], at: usize, s: &str) -> bool {
    let mut i = at;
    for c in s.chars() {
        if chars.get(i) != Some(&c) {
            return false;
        }
        i += 1;
    }
    true
}

/// Whether `operator` at this point is the keyword (`operator()`,
/// `operator<`, `operator new`), not the start of a name like `operators`.
fn is_operator(chars: &[char], after: usize) -> bool {
    match chars.get(after) {
        None => false,
        Some(c) => !(c.is_alphanumeric() || *c == '_'),
    }
}

/// The index just past the bracket group that opens at `at`.
fn skip_group(chars: &[char], at: usize) -> usize {
    let mut depth = 0usize;
    let mut i = at;
    while i < chars.len() {
        match chars[i] {
            '<' | '(' | '{' | '[' => depth += 1,
            '>' | ')' | '}' | ']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        // `->` inside a group (a trailing return type) is no bracket.
        if chars[i] == '-' && chars.get(i + 1) == Some(&'>') {
            i += 1;
        }
        i += 1;
    }
    chars.len()
}

/// Whether a `::` follows at bracket depth 0: the group just skipped was
/// an enclosing function's parameters (`f(int)::{lambda()#1}::operator()`).
fn rest_has_scope(chars: &[char], from: usize) -> bool {
    let mut i = from;
    while i < chars.len() {
        match chars[i] {
            '<' | '(' | '{' | '[' => i = skip_group(chars, i),
            ':' if chars.get(i + 1) == Some(&':') => return true,
            _ => i += 1,
        }
    }
    false
}

/// `{lambda(int, char)#1}` → `{lambda#1}`.
fn without_groups(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '(' || (chars[i] == '<' && i > 0) {
            i = skip_group(&chars, i);
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn qualifiers_of_an_enclosing_function_keep_the_name() {
        assert_eq!(
            short_native_name("node::Foo::Bar() const::{lambda()#1}::operator()() const"),
            "node::Foo::Bar::{lambda#1}::operator()"
        );
        assert_eq!(
            short_native_name("foo(int) &&::{lambda()#2}::operator()() const"),
            "foo::{lambda#2}::operator()"
        );
        let rust = "<alloc::vec::Vec<T> as core::ops::drop::Drop>::drop";
        assert_eq!(short_native_name(rust), rust);
    }

    use super::*;
    use crate::output::testdata::js;

    #[test]
    fn js_function_first_with_file_name() {
        assert_eq!(
            short_label(&js("fibonacci", "file:///srv/app/lib/workload.js", 60, 3)),
            "fibonacci workload.js:61"
        );
        assert_eq!(
            short_label(&js("", "node:internal/fs/utils", 10, 0)),
            "(anonymous) node:internal/fs/utils:11"
        );
        assert_eq!(
            short_label(&Frame::new(FrameKind::Js, "evalFn", "")),
            "evalFn"
        );
    }

    #[test]
    fn argument_lists_go() {
        assert_eq!(
            short_native_name(
                "v8::internal::(anonymous namespace)::Invoke(v8::internal::Isolate*, v8::internal::(anonymous namespace)::InvokeParams const&)"
            ),
            "v8::internal::(anonymous namespace)::Invoke"
        );
        assert_eq!(
            short_native_name("node::SpinEventLoopInternal(node::Environment*)"),
            "node::SpinEventLoopInternal"
        );
        assert_eq!(
            short_native_name("v8::Function::Call(v8::Local<v8::Context>) const"),
            "v8::Function::Call"
        );
    }

    #[test]
    fn templates_and_return_types_go() {
        assert_eq!(
            short_native_name(
                "void v8::internal::BodyDescriptorBase::IteratePointers<v8::internal::MarkingVisitor>(v8::internal::HeapObject, int, int, v8::internal::MarkingVisitor*)"
            ),
            "v8::internal::BodyDescriptorBase::IteratePointers"
        );
        assert_eq!(
            short_native_name("std::vector<int, std::allocator<int> >::_M_realloc_insert<int const&>(__gnu_cxx::__normal_iterator<int*, std::vector<int> >, int const&)"),
            "std::vector::_M_realloc_insert"
        );
        assert_eq!(
            short_native_name("unsigned long node::Foo<char>::size() const"),
            "node::Foo::size"
        );
    }

    #[test]
    fn operators_keep_their_symbol() {
        assert_eq!(
            short_native_name("std::function<void ()>::operator()() const"),
            "std::function::operator()"
        );
        assert_eq!(
            short_native_name("v8::internal::operator<<(std::ostream&, v8::internal::Object)"),
            "v8::internal::operator<<"
        );
        assert_eq!(
            short_native_name("node::Foo::operator new(unsigned long)"),
            "node::Foo::operator new"
        );
        assert_eq!(
            short_native_name("node::operators_list()"),
            "node::operators_list"
        );
    }

    #[test]
    fn lambdas_keep_their_number() {
        assert_eq!(
            short_native_name(
                "node::worker::Worker::StartThread(v8::FunctionCallbackInfo<v8::Value> const&)::{lambda(void*)#1}::operator()(void*) const"
            ),
            "node::worker::Worker::StartThread::{lambda#1}::operator()"
        );
        assert_eq!(
            short_native_name("node::Foo()::{lambda(int)#2}::_FUN(int)"),
            "node::Foo::{lambda#2}::_FUN"
        );
    }

    #[test]
    fn c_and_odd_names_stay() {
        assert_eq!(
            short_native_name("__memmove_avx_unaligned_erms"),
            "__memmove_avx_unaligned_erms"
        );
        assert_eq!(short_native_name("Builtins_JSEntry"), "Builtins_JSEntry");
        assert_eq!(short_native_name("malloc [clone .cold]"), "malloc");
        assert_eq!(short_native_name("[unknown] 0x7f00"), "[unknown] 0x7f00");
        assert_eq!(
            short_native_name("Builtin: CallFunction"),
            "Builtin: CallFunction"
        );
        assert_eq!(
            short_native_name(
                "std::__cxx11::basic_string<char>::basic_string[abi:cxx11](char const*)"
            ),
            "std::__cxx11::basic_string::basic_string"
        );
    }
}
