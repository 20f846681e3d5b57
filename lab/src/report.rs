//! Markdown tables of training and evaluation results, as `trio train`, `trio eval` and the
//! measurement drivers print them. Percentages carry one decimal.

use trio_engine::train::trainer::FUSED;
use trio_engine::train::{Evaluation, Report};

/// A result that prints as a Markdown table.
pub trait Markdown {
    fn to_markdown(&self) -> String;
}

impl Markdown for Report {
    fn to_markdown(&self) -> String {
        let mut s = String::from(
            "| model | inputs | test top-1 | test top-5 | val top-1 | val top-5 | epochs | seconds |\n\
             |---|---|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in &self.rows {
            s.push_str(&format!(
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.1} |\n",
                r.variant,
                r.inputs,
                100.0 * r.test.top1,
                100.0 * r.test.top5,
                100.0 * r.val.top1,
                100.0 * r.val.top5,
                r.epochs_run,
                r.seconds
            ));
        }
        for r in self.rows.iter().filter(|r| !r.width_trials.is_empty()) {
            let tried: Vec<String> = r
                .width_trials
                .iter()
                .map(|t| format!("{} → val {:.1}", t.image_proj_dim, 100.0 * t.val_top1))
                .collect();
            s.push_str(&format!(
                "\n{}: image projection width chosen on validation among {}\n",
                r.variant,
                tried.join(", ")
            ));
        }
        s
    }
}

impl Markdown for Evaluation {
    fn to_markdown(&self) -> String {
        let mut s = String::from(
            "| model | inputs given | items that lost the input | top-1 | top-5 |\n\
             |---|---|---:|---:|---:|\n",
        );
        for r in &self.rows {
            let model = match &r.removed {
                Some(input) => format!("{} without {input}", r.model),
                None if r.model == FUSED => r.model.clone(),
                None => format!("{} (stored baseline)", r.model),
            };
            let affected = r
                .items_with_removed
                .map_or_else(|| "–".to_string(), |n| n.to_string());
            s.push_str(&format!(
                "| {model} | {} | {affected} | {:.1} | {:.1} |\n",
                if r.inputs.is_empty() {
                    "none"
                } else {
                    &r.inputs
                },
                100.0 * r.metrics.top1,
                100.0 * r.metrics.top5
            ));
        }
        s
    }
}
