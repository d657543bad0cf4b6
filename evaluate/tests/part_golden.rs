//! The validation part (`validate --shard --partial-out`) is a versioned format (FORMATS.md): this golden file
//! pins its bytes. A deliberate change bumps `PART_VERSION`, updates FORMATS.md and re-blesses the file.

use evaluate::shards::{ValidatePart, PART_FORMAT, PART_VERSION};

fn sample() -> ValidatePart {
    let mut report = reports::Report::read(&test_support::root().join("reports/testdata/golden/report.json")).unwrap();
    // A shard's report counts the shard's images.
    report.comparison.images = 2;
    let part = serde_json::json!({
        "format": PART_FORMAT,
        "version": PART_VERSION,
        "shard": {"index": 2, "count": 3, "list_sha256": "ab".repeat(32)},
        "gates": {
            "max_top1_drop": 0.5,
            "fidelity": {"min_cosine": 0.99, "min_sqnr_db": null, "min_agreement": null},
            "baseline_int8_top1": null
        },
        "parts": {
            "images": 2,
            "classes": 2,
            "reference": {"labelled": 2, "top1": 1, "top5": 2, "per_class": [[1, 1], [0, 1]]},
            "reference_seconds": 0.5,
            "candidates": [{
                "tally": {"labelled": 2, "top1": 1, "top5": 2, "per_class": [[1, 1], [0, 1]]},
                "fidelity": {
                    "images": [
                        {"agree": true, "cosine": 0.9990234375f64.to_bits(), "signal": 12.5f64.to_bits(),
                         "noise": 0.0625f64.to_bits()},
                        {"agree": false, "cosine": 0.75f64.to_bits(), "signal": 3.0f64.to_bits(),
                         "noise": 0.5f64.to_bits()}
                    ],
                    "non_finite": [[0, 0], [0, 0]]
                },
                "seconds": 0.25
            }]
        },
        "report": report,
    });
    serde_json::from_value(part).unwrap()
}

#[test]
fn part_bytes_match_the_golden_file_and_read_back() {
    let bytes = sample().to_json().unwrap();
    let golden = test_support::golden(env!("CARGO_MANIFEST_DIR"), "part.json");
    test_support::assert_golden(&golden, &bytes);
    assert_eq!(ValidatePart::read(&golden).unwrap(), sample());
    let c = &sample().parts.finish(std::path::Path::new("val")).unwrap()[0];
    // Mean cosine of the two images, SQNR 10 log10(15.5 / 0.5625), agreement 1 of 2: from the exact bits.
    assert_eq!((c.cosine_mean, c.agreement), ((0.9990234375 + 0.75) / 2.0, 0.5));
    assert!((c.sqnr_db - 10.0 * (15.5f64 / 0.5625).log10()).abs() < 1e-12);
}
