//! `pipeline-host audit` through a real broker: it finds nothing wrong
//! after a clean run, reports unprocessed input as missing (exit 1), and
//! counts a second run's output as duplicates.

use pipeline_tests::{Broker, audit, audit_totals as totals, generate, pipeline, plugin_args};

/// Clean run: nothing missing or duplicated; new input: missing; a second
/// run without a group: every delivered record duplicated.
#[test]
fn audit_finds_missing_and_duplicated_records() {
    let broker = Broker::start();
    let b = broker.bootstrap();
    let plugins = plugin_args(&["android_filter", "enrich"]);
    let produce = |seed: &str, count: &str| {
        generate(
            &b,
            "in",
            &[
                "--malformed",
                "0.02",
                "--missing",
                "0.02",
                "--seed",
                seed,
                "--count",
                count,
            ],
        );
    };
    let run = || {
        let out = pipeline(&b, "in", "out")
            .args(["--until-end"])
            .args(&plugins)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    produce("1", "5000");
    run();
    let (code, table) = audit(&b, &plugins);
    assert_eq!(code, Some(0), "{table}");
    let t = totals(&table); // inputs delivered filtered missing duplicates
    assert_eq!(t[0], 5000, "{table}");
    assert_eq!(t[1] + t[2], 5000, "{table}");
    assert!(t[2] > 1000, "the filter drops non-android events: {table}");
    assert_eq!((t[3], t[4]), (0, 0), "{table}");
    let delivered_first = t[1];

    produce("2", "300");
    let (code, table) = audit(&b, &plugins);
    assert_eq!(code, Some(1), "unprocessed input is missing: {table}");
    let t = totals(&table);
    assert!(t[3] > 100 && t[3] < 300, "{table}");

    run(); // no group: reads everything again
    let (code, table) = audit(&b, &plugins);
    assert_eq!(code, Some(0), "{table}");
    let t = totals(&table);
    assert_eq!(t[3], 0, "{table}");
    assert_eq!(
        t[4], delivered_first,
        "every delivery of the first run is now duplicated: {table}"
    );
}
