//! How much each input matters, and whether one fused model copes when it is gone: the fused
//! model scored on the test split with an input removed from every item, beside a model trained
//! without that input at all.

use serde::{Deserialize, Serialize};

use trio_engine::train::trainer::FUSED;
use trio_engine::train::{Example, Input, SplitMetrics, Study, TrainedModel, Trainer};
use trio_engine::{Progress, Result};

use crate::report::Markdown;

/// One removed input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RobustnessRow {
    pub removed: Input,
    /// Test items that had the input (the others are unchanged by its removal).
    pub test_items_with_input: usize,
    /// The fused model, input removed from every test item.
    pub fused: SplitMetrics,
    /// The variant trained without the input.
    pub specialist_variant: String,
    /// That variant on the (unchanged) test split.
    pub specialist: SplitMetrics,
    /// The same two on the validation split, where settings may be chosen (the test split
    /// only reports). Absent from reports written before they were added.
    #[serde(default)]
    pub val_fused: SplitMetrics,
    #[serde(default)]
    pub val_specialist: SplitMetrics,
}

/// The fused model intact, then one row per removed input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RobustnessTable {
    pub intact: SplitMetrics,
    pub rows: Vec<RobustnessRow>,
}

impl Markdown for RobustnessTable {
    fn to_markdown(&self) -> String {
        let mut s = format!(
            "fused, all inputs: top-1 {:.1}, top-5 {:.1}\n\n\
             | removed | test items affected | fused top-1 | fused top-5 | trained without | top-1 | top-5 | val: fused / without, top-1 |\n\
             |---|---:|---:|---:|---|---:|---:|---:|\n",
            100.0 * self.intact.top1,
            100.0 * self.intact.top5
        );
        for r in &self.rows {
            s.push_str(&format!(
                "| {} | {} | {:.1} | {:.1} | {} | {:.1} | {:.1} | {:.1} / {:.1} |\n",
                r.removed,
                r.test_items_with_input,
                100.0 * r.fused.top1,
                100.0 * r.fused.top5,
                r.specialist_variant,
                100.0 * r.specialist.top1,
                100.0 * r.specialist.top5,
                100.0 * r.val_fused.top1,
                100.0 * r.val_specialist.top1
            ));
        }
        s
    }
}

/// Removes each input of the study's fused model in turn (the image, each text field, and all
/// text when there are several fields), scoring the fused model without it and a model trained
/// without it. The study's image-only and text-only models are reused; a model without one
/// text field is trained here with the same settings and split.
pub fn robustness(
    trainer: &Trainer,
    examples: &[Example],
    study: &Study,
    progress: &dyn Progress,
) -> Result<RobustnessTable> {
    let test: &[usize] = &study.split.test;
    let val: &[usize] = &study.split.val;
    let inputs = study.fused.inputs();
    let removals: Vec<Input> = inputs
        .removals()
        .into_iter()
        .filter(|r| !inputs.without(r).is_empty())
        .collect();
    // The fused model's scores, intact and with each input removed, in one pass over the
    // features: intact on test, then (test, validation) per removal.
    let mut queries: Vec<(&[usize], Option<&Input>)> = vec![(test, None)];
    for removed in &removals {
        queries.extend([(test, Some(removed)), (val, Some(removed))]);
    }
    let fused = trainer.evaluate_many(&study.fused, examples, &queries)?;
    let mut rows = Vec::new();
    for (i, removed) in removals.iter().enumerate() {
        let rest = inputs.without(removed);
        let reused: Option<&TrainedModel> = [study.image_only.as_ref(), study.text_only.as_ref()]
            .into_iter()
            .flatten()
            .find(|m| m.inputs() == rest);
        let trained;
        let specialist = match reused {
            Some(m) => m,
            None => {
                let name = format!("{FUSED} without {removed}");
                trained = trainer.train_variant(examples, &study.split, &name, &rest, progress)?;
                &trained
            }
        };
        let with_input = test
            .iter()
            .filter(|&&r| {
                let e = &examples[r];
                match removed {
                    Input::Image => e.image.is_some(),
                    Input::Text(f) => e.text.contains_key(f),
                    Input::AllText => inputs.text_fields.iter().any(|f| e.text.contains_key(f)),
                }
            })
            .count();
        let alone = trainer.evaluate_many(specialist, examples, &[(test, None), (val, None)])?;
        rows.push(RobustnessRow {
            fused: fused[1 + 2 * i],
            val_fused: fused[2 + 2 * i],
            test_items_with_input: with_input,
            removed: removed.clone(),
            specialist_variant: specialist.variant.clone(),
            specialist: alone[0],
            val_specialist: alone[1],
        });
    }
    Ok(RobustnessTable {
        intact: fused[0],
        rows,
    })
}
