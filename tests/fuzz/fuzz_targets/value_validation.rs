//! Value validation, the first thing an input value meets: the host's
//! `validate_object` (compiled from `host/src/stages/validate.rs` itself)
//! must agree with serde_json building a tree, never panic, and the
//! merge of two values it accepted (what an `append` verdict does, with an
//! `expect` in the chain) must succeed and hold the members a JSON reader
//! expects: the event's, overwritten by the fragment's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[path = "../../../host/src/stages/validate.rs"]
#[allow(dead_code)]
mod validate;

fuzz_target!(|data: &[u8]| {
    // The first byte picks where the input splits into event and fragment.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    check_one(rest);
    let at = usize::from(split) * rest.len() / 256;
    let (event, fragment) = rest.split_at(at);
    if validate::validate_object(event).is_err() || validate::validate_object(fragment).is_err() {
        return;
    }
    let mut merged = Vec::new();
    stage_sdk::json::merge_into(&mut merged, event, fragment)
        .expect("two validated objects merge");
    if let Err(e) = validate::validate_object(&merged) {
        panic!("the merge of two valid objects is invalid: {e}: {merged:?}");
    }
    let (Ok(Value::Object(mut want)), Ok(Value::Object(add)), Ok(Value::Object(got))) = (
        serde_json::from_slice::<Value>(event),
        serde_json::from_slice::<Value>(fragment),
        serde_json::from_slice::<Value>(&merged),
    ) else {
        return; // JSON serde_json's tree cannot hold (see `beyond_tree`)
    };
    want.extend(add);
    assert_eq!(got, want, "merged members");
});

/// `validate_object` against serde_json's tree, and the lazy field reader
/// over what it accepts.
fn check_one(value: &[u8]) {
    let verdict = validate::validate_object(value);
    match serde_json::from_slice::<Value>(value) {
        Ok(Value::Object(members)) => {
            assert!(verdict.is_ok(), "an object refused: {verdict:?}");
            for (name, v) in &members {
                let raw = stage_sdk::json::field(value, name).expect("a member is found");
                let parsed: Value = serde_json::from_slice(raw.bytes()).expect("a member's JSON");
                assert_eq!(&parsed, v, "member {name}");
            }
        }
        Ok(_) => assert!(verdict.is_err(), "a non-object accepted"),
        // Valid JSON a tree cannot hold: a number past f64, or nesting
        // deeper than serde_json's tree builder allows (validation has no
        // depth limit: it builds no tree and recurses nowhere).
        Err(e) if beyond_tree(&e) => {}
        Err(e) => assert!(verdict.is_err(), "invalid JSON accepted ({e})"),
    }
}

/// True for serde_json errors that come from building a tree, not from the
/// text being invalid.
fn beyond_tree(e: &serde_json::Error) -> bool {
    let message = e.to_string();
    message.starts_with("number out of range") || message.starts_with("recursion limit exceeded")
}
