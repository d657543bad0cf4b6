//! `report.html`: one self-contained page (inline CSS and SVG, no scripts, no network), readable offline.
//! Every number shown carries its exact value in `data-key`/`data-value` attributes so that a browser check
//! can compare the rendered page with report.json.

use crate::{escape, Report, TensorPlot};

fn num(key: &str, value: f64, shown: String) -> String {
    format!("<span data-key=\"{}\" data-value=\"{value}\">{}</span>", escape(key), escape(&shown))
}

/// f32 fields keep their shortest float32 form, as report.json writes them.
fn num32(key: &str, value: f32, shown: String) -> String {
    format!("<span data-key=\"{}\" data-value=\"{value}\">{}</span>", escape(key), escape(&shown))
}

fn pct(key: &str, v: f64) -> String {
    num(key, v, format!("{:.2} %", 100.0 * v))
}

/// A Top-1/Top-5 cell: the share, or "no labels" for an unlabelled folder (report.json holds null).
fn accuracy(key: &str, v: Option<f64>) -> String {
    v.map(|v| pct(key, v)).unwrap_or_else(|| "no labels".into())
}

/// A recipe of several input sizes: each size's FP32, FP16 and INT8 rows (the accuracy table above is over
/// every size's images together), the worst size named.
fn sizes_section(report: &Report) -> String {
    let mut page = String::from("<h2>Per input size</h2>");
    if let Some([h, w]) = report.worst_size() {
        page.push_str(&format!("<p>Worst size: <b>{h}x{w}</b> (most failed criteria, then lowest INT8 cosine).</p>"));
    }
    page.push_str(&format!(
        "<table><tr><th>size</th><th>images</th><th>{} Top-1</th><th>FP16 Top-1</th><th>INT8 Top-1</th>\
         <th>INT8 agreement</th><th>INT8 cosine</th><th>INT8 SQNR</th><th>FP16 cosine</th><th>criteria</th></tr>",
        escape(&report.reference_label())
    ));
    for (i, row) in report.sizes.iter().enumerate() {
        let (c, key) = (&row.comparison, |k: &str| format!("sizes.{i}.{k}"));
        let failed = report.criteria.iter().filter(|cr| cr.size == Some(row.size) && !cr.passed).count();
        let held = report.criteria.iter().filter(|cr| cr.size == Some(row.size)).count();
        page.push_str(&format!(
            "<tr><td>{}x{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
            row.size[0],
            row.size[1],
            if row.calibrated { "" } else { " (not in the statistics)" },
            num(&key("comparison.images"), c.images as f64, c.images.to_string()),
            accuracy(&key("comparison.fp32.top1"), c.fp32.top1),
            row.fp16.as_ref().map_or("not measured".into(), |f| accuracy(&key("fp16.metrics.top1"), f.metrics.top1)),
            accuracy(&key("comparison.int8.top1"), c.int8.top1),
            pct(&key("comparison.agreement"), c.agreement),
            num(&key("comparison.cosine_mean"), c.cosine_mean, format!("{:.5}", c.cosine_mean)),
            num(&key("comparison.sqnr_db"), c.sqnr_db, format!("{:.1} dB", c.sqnr_db)),
            row.fp16
                .as_ref()
                .map_or("not measured".into(), |f| num(&key("fp16.cosine_mean"), f.cosine_mean, format!("{:.5}", f.cosine_mean))),
            if failed == 0 { "pass" } else { "fail" },
            if held == 0 { "none held".to_string() } else { format!("{} of {held} hold", held - failed) }
        ));
    }
    page.push_str("</table>");
    page
}

/// How the options were chosen and what the written model measured on the held-back calibration samples.
fn self_check_section(report: &Report) -> String {
    let mut page = format!(
        "<h2>Self-check</h2><p>Method <b>{}</b>, attention and float type chosen by <b>{}</b>.</p>",
        escape(&report.method),
        escape(if report.chosen_by.is_empty() { "not recorded" } else { &report.chosen_by })
    );
    let check = &report.self_check;
    let fidelity = &check["fidelity"];
    let value = |key: &str| fidelity[key].as_f64();
    match (value("sqnr_db"), value("cosine_mean"), value("agreement")) {
        (Some(sqnr), Some(cosine), Some(agreement)) => page.push_str(&format!(
            "<p>The written model against the float model on {} ({}): output SQNR {}, cosine {}, agreement {}.</p>",
            escape(check["samples"].as_str().unwrap_or("held-back samples")),
            escape(check["evaluation"].as_str().unwrap_or("")),
            num("self_check.fidelity.sqnr_db", sqnr, format!("{sqnr:.1} dB")),
            num("self_check.fidelity.cosine_mean", cosine, format!("{cosine:.5}")),
            pct("self_check.fidelity.agreement", agreement)
        )),
        _ => page.push_str(&format!(
            "<p>Not measured: {}.</p>",
            // A skipped self-check says why in `samples`.
            escape(check["samples"].as_str().unwrap_or("no held-back samples"))
        )),
    }
    page
}

fn class_deltas_svg(report: &Report) -> String {
    let c = &report.comparison;
    let deltas: Vec<f64> = c
        .fp32
        .per_class
        .iter()
        .zip(&c.int8.per_class)
        .map(|((a, n), (b, _))| if *n > 0 { 100.0 * (*b as f64 - *a as f64) / *n as f64 } else { 0.0 })
        .collect();
    let span = deltas.iter().fold(1.0f64, |m, d| m.max(d.abs()));
    let (w, h, bar) = (40.0 + 36.0 * deltas.len() as f64, 200.0, 24.0);
    let mid = h / 2.0;
    let mut svg = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" role=\"img\" aria-label=\"per-class Top-1 change\">", h + 30.0);
    svg.push_str(&format!("<line x1=\"30\" y1=\"{mid}\" x2=\"{w}\" y2=\"{mid}\" stroke=\"#888\"/>"));
    svg.push_str(&format!("<text x=\"0\" y=\"14\" font-size=\"11\">+{span:.2} pp</text><text x=\"0\" y=\"{h}\" font-size=\"11\">-{span:.2} pp</text>"));
    for (i, d) in deltas.iter().enumerate() {
        let x = 40.0 + 36.0 * i as f64;
        let len = (d.abs() / span) * (mid - 16.0);
        let (y, color) = if *d >= 0.0 { (mid - len, "#2a7") } else { (mid, "#c33") };
        let name = report.classes.get(i).cloned().unwrap_or_else(|| i.to_string());
        svg.push_str(&format!(
            "<rect x=\"{x}\" y=\"{y}\" width=\"{bar}\" height=\"{len}\" fill=\"{color}\"><title>{}: {d:+.2} pp</title></rect>",
            escape(&name)
        ));
        svg.push_str(&format!(
            "<text x=\"{x}\" y=\"{}\" font-size=\"10\">{}</text>",
            h + 24.0,
            escape(&name.chars().take(6).collect::<String>())
        ));
    }
    svg.push_str("</svg>");
    svg
}

fn histogram_svg(t: &TensorPlot) -> String {
    let (w, h) = (360.0, 90.0);
    let max_log = t.counts.iter().map(|&c| ((c + 1) as f64).ln()).fold(0.0f64, f64::max).max(1e-9);
    let n = t.counts.len().max(1) as f64;
    let mut path = format!("M0,{h}");
    for (i, &c) in t.counts.iter().enumerate() {
        let x = w * i as f64 / n;
        let y = h - h * ((c + 1) as f64).ln() / max_log;
        path.push_str(&format!(" L{x:.1},{y:.1} L{:.1},{y:.1}", w * (i + 1) as f64 / n));
    }
    path.push_str(&format!(" L{w},{h} Z"));
    let xa = if t.plot_range > 0.0 { w * (t.amax as f64 / t.plot_range).min(1.0) } else { 0.0 };
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" role=\"img\" aria-label=\"|x| histogram of {name}\">\
         <path d=\"{path}\" fill=\"#9bd\" stroke=\"#47a\" stroke-width=\"0.5\"/>\
         <line x1=\"{xa:.1}\" y1=\"0\" x2=\"{xa:.1}\" y2=\"{h}\" stroke=\"#c00\" stroke-width=\"1.5\"><title>amax {amax}</title></line>\
         <text x=\"2\" y=\"{ty}\" font-size=\"10\">0</text><text x=\"{tx}\" y=\"{ty}\" font-size=\"10\">{range:.3}</text></svg>",
        h + 14.0,
        name = escape(&t.name),
        amax = t.amax,
        ty = h + 12.0,
        tx = w - 40.0,
        range = t.plot_range,
    )
}

fn sensitivity_svg(rows: &[crate::SensitivityRow]) -> String {
    let (w, row_h) = (720.0, 16.0);
    let h = row_h * rows.len() as f64 + 20.0;
    let max_log = rows.iter().map(|r| (1.0 + r.divergence * 1e4).ln()).fold(1e-9f64, f64::max);
    let mut svg = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"sensitivity ranking\">");
    for (i, r) in rows.iter().enumerate() {
        let y = 4.0 + row_h * i as f64;
        let len = 300.0 * (1.0 + r.divergence * 1e4).ln() / max_log;
        let color = if r.int8 { "#47a" } else { "#aaa" };
        svg.push_str(&format!(
            "<text x=\"0\" y=\"{}\" font-size=\"10\">{}</text><rect x=\"260\" y=\"{y}\" width=\"{len:.1}\" height=\"7\" fill=\"{color}\"><title>{} ({}): divergence {:.3e}, {}</title></rect>\
             <rect x=\"260\" y=\"{}\" width=\"{:.1}\" height=\"4\" fill=\"#e90\"><title>FLOP share {:.1} %</title></rect>",
            y + 9.0,
            escape(&r.node.chars().rev().take(40).collect::<String>().chars().rev().collect::<String>()),
            escape(&r.node),
            escape(&r.op),
            r.divergence,
            if r.int8 { "INT8" } else { "float" },
            y + 8.0,
            300.0 * r.flop_share,
            100.0 * r.flop_share
        ));
    }
    svg.push_str("</svg>");
    svg
}

/// The per-class Top-1 change chart and table (labelled folders).
fn per_class_section(report: &Report) -> String {
    let c = &report.comparison;
    let reference = escape(&report.reference_label());
    let mut page = format!("<h2>Per-class Top-1 change (INT8 − {reference})</h2>");
    page.push_str(&class_deltas_svg(report));
    page.push_str(&format!("<table><tr><th>class</th><th>images</th><th>{reference}</th><th>INT8</th></tr>"));
    for (i, ((a, n), (b, _))) in c.fp32.per_class.iter().zip(&c.int8.per_class).enumerate() {
        let acc = |k: u64| if *n > 0 { k as f64 / *n as f64 } else { 0.0 };
        page.push_str(&format!(
            "<tr><td>{}</td><td>{n}</td><td>{}</td><td>{}</td></tr>",
            escape(report.classes.get(i).map(String::as_str).unwrap_or("")),
            pct(&format!("class.{i}.fp32"), acc(*a)),
            pct(&format!("class.{i}.int8"), acc(*b))
        ));
    }
    page.push_str("</table>");
    page
}

/// report.html: one self-contained page (inline SVG, no script) with every number from report.json.
pub fn render_html(report: &Report) -> String {
    let c = &report.comparison;
    let mut page = String::from("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    page.push_str(&format!("<title>int8kit report: {}</title>", escape(&report.model)));
    page.push_str("<style>body{font:14px sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:1em 0}\
        td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}td:first-child{text-align:left}\
        .pass{color:#176}.fail{color:#b00;font-weight:bold}figure{display:inline-block;margin:6px}figcaption{font-size:11px}</style></head><body>");
    let verdict =
        if report.passed { "<span class=\"pass\">PASSED</span>" } else { "<span class=\"fail\">FAILED</span>" };
    page.push_str(&format!("<h1>int8kit validation: {} — {verdict}</h1>", escape(&report.model)));
    page.push_str(&format!(
        "<p>Method <b>{}</b>, engine <b>{}</b>, {} calibration images, {} validation images from <code>{}</code>; model sha256 <code>{}</code>.</p>",
        escape(&report.method),
        escape(&report.engine),
        num("calibration_images", report.calibration_images as f64, report.calibration_images.to_string()),
        num("comparison.images", c.images as f64, c.images.to_string()),
        escape(&report.validation_folder),
        escape(&report.model_sha256)
    ));
    let e = &report.evaluation;
    page.push_str(&format!(
        "<p>Computed by: {} <b>{}</b>; FP16 <b>{}</b>; INT8 <b>{}</b>.</p>",
        escape(&report.reference_label()),
        escape(&e.fp32),
        escape(&e.fp16),
        escape(&e.int8)
    ));
    // The source article's three rows side by side: FP32 (or the model as given), the model in FP16 without
    // Q/DQ, INT8.
    let reference = escape(&report.reference_label());
    let h = report.fp16.as_ref();
    let fp16_cell = |f: &dyn Fn(&crate::FloatRow) -> String| h.map(f).unwrap_or_else(|| "not measured".into());
    page.push_str(&format!(
        "<h2>Accuracy</h2><p>INT8 model: Q/DQ placed for <b>{}</b>, float parts in <b>{}</b>.</p><table><tr><th>metric</th><th>{reference}</th><th>FP16 (no Q/DQ)</th><th>INT8</th></tr>",
        escape(&report.target),
        escape(&report.float_type)
    ));
    page.push_str(&format!(
        "<tr><td>Top-1</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        accuracy("comparison.fp32.top1", c.fp32.top1),
        fp16_cell(&|h| accuracy("fp16.metrics.top1", h.metrics.top1)),
        accuracy("comparison.int8.top1", c.int8.top1)
    ));
    page.push_str(&format!(
        "<tr><td>Top-5</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        accuracy("comparison.fp32.top5", c.fp32.top5),
        fp16_cell(&|h| accuracy("fp16.metrics.top5", h.metrics.top5)),
        accuracy("comparison.int8.top5", c.int8.top5)
    ));
    page.push_str(&format!(
        "<tr><td>images/s</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        num("comparison.fp32.images_per_s", c.fp32.images_per_s, format!("{:.0}", c.fp32.images_per_s)),
        fp16_cell(&|h| num(
            "fp16.metrics.images_per_s",
            h.metrics.images_per_s,
            format!("{:.0}", h.metrics.images_per_s)
        )),
        num("comparison.int8.images_per_s", c.int8.images_per_s, format!("{:.0}", c.int8.images_per_s))
    ));
    page.push_str(&format!(
        "<tr><td>agreement with {reference}</td><td></td><td>{}</td><td>{}</td></tr>",
        fp16_cell(&|h| pct("fp16.agreement", h.agreement)),
        pct("comparison.agreement", c.agreement)
    ));
    page.push_str(&format!(
        "<tr><td>output cosine (mean)</td><td></td><td>{}</td><td>{}</td></tr>",
        fp16_cell(&|h| num("fp16.cosine_mean", h.cosine_mean, format!("{:.5}", h.cosine_mean))),
        num("comparison.cosine_mean", c.cosine_mean, format!("{:.5}", c.cosine_mean))
    ));
    page.push_str(&format!(
        "<tr><td>output SQNR</td><td></td><td>{}</td><td>{}</td></tr>",
        fp16_cell(&|h| num("fp16.sqnr_db", h.sqnr_db, format!("{:.1} dB", h.sqnr_db))),
        num("comparison.sqnr_db", c.sqnr_db, format!("{:.1} dB", c.sqnr_db))
    ));
    page.push_str(&format!(
        "<tr><td>GEMM/Conv FLOPs in INT8</td><td></td><td></td><td>{}</td></tr></table>",
        pct("int8_flop_share", report.int8_flop_share)
    ));

    if !report.sizes.is_empty() {
        page.push_str(&sizes_section(report));
    }
    page.push_str(&self_check_section(report));

    page.push_str(
        "<h2>Release criteria</h2><table><tr><th>criterion</th><th>measured</th><th>limit</th><th>result</th></tr>",
    );
    for (i, cr) in report.criteria.iter().enumerate() {
        page.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
            escape(&cr.case_name()),
            num(&format!("criteria.{i}.measured"), cr.measured, format!("{:.3}", cr.measured)),
            num(&format!("criteria.{i}.limit"), cr.limit, format!("{:.3}", cr.limit)),
            if cr.passed { "pass" } else { "fail" },
            escape(&cr.message)
        ));
    }
    page.push_str("</table>");

    if c.fp32.per_class.is_empty() {
        page.push_str("<h2>Per-class Top-1</h2><p>Not measured: the validation folder has no labels.</p>");
    } else {
        page.push_str(&per_class_section(report));
    }

    if !report.sensitivity.is_empty() {
        page.push_str("<h2>Sensitivity: nodes ranked by damage when quantized alone</h2>");
        page.push_str("<p>Bar: output divergence with only this node in INT8 (log scale; blue = INT8 in this model, grey = float). Orange: share of GEMM/Conv FLOPs.</p>");
        page.push_str(&sensitivity_svg(&report.sensitivity));
        page.push_str("<table><tr><th>node</th><th>op</th><th>FLOP share</th><th>divergence alone</th><th>Top-1 change alone</th><th>precision</th></tr>");
        for (i, r) in report.sensitivity.iter().enumerate() {
            page.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&r.node),
                escape(&r.op),
                pct(&format!("sensitivity.{i}.flop_share"), r.flop_share),
                num(&format!("sensitivity.{i}.divergence"), r.divergence, format!("{:.3e}", r.divergence)),
                r.top1_delta_pp
                    .map(|d| num(&format!("sensitivity.{i}.top1_delta_pp"), d, format!("{d:+.2} pp")))
                    .unwrap_or_else(|| "no labels".into()),
                if r.int8 { "INT8" } else { "float" }
            ));
        }
        page.push_str("</table>");
    }

    page.push_str("<h2>Quantized tensors: ranges and |x| histograms</h2><p>Log-scale counts; the red line is the chosen amax.</p>");
    page.push_str("<table><tr><th>tensor</th><th>amax</th><th>max |x|</th><th>clipped</th></tr>");
    for (i, t) in report.tensors.iter().enumerate() {
        page.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&t.name),
            num32(&format!("tensors.{i}.amax"), t.amax, format!("{:.4}", t.amax)),
            num32(&format!("tensors.{i}.max_abs"), t.max_abs, format!("{:.4}", t.max_abs)),
            num(&format!("tensors.{i}.clipped"), t.clipped, format!("{:.2e}", t.clipped))
        ));
    }
    page.push_str("</table>");
    for t in &report.tensors {
        page.push_str(&format!("<figure>{}<figcaption>{}</figcaption></figure>", histogram_svg(t), escape(&t.name)));
    }
    page.push_str(&format!(
        "<p>Tools: {}.</p></body></html>\n",
        report.tools.iter().map(|(k, v)| format!("{} {}", escape(k), escape(v))).collect::<Vec<_>>().join(", ")
    ));
    page
}
