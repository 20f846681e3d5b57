//! What a study returns: the report shaped like the study's table, and the trained models.

use super::*;

/// One row of the study's table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRow {
    pub variant: String,
    /// The inputs the variant reads, e.g. `image + description + title`.
    pub inputs: String,
    pub test: SplitMetrics,
    pub val: SplitMetrics,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub seconds: f64,
    /// The image projection widths tried, when more than one was (the best validation kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub width_trials: Vec<WidthTrial>,
}

/// The study's table: every variant scored on the same validation and test items. An item
/// lacking every input a variant reads still counts, with that variant's "nothing present"
/// prediction, so rows are comparable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub label_field: String,
    pub seed: u64,
    pub classes: usize,
    pub train_items: usize,
    pub val_items: usize,
    pub test_items: usize,
    pub fingerprint: String,
    pub rows: Vec<ReportRow>,
    /// Wall-clock time of the whole study.
    pub seconds: f64,
}

impl Report {
    pub fn row(&self, variant: &str) -> Option<&ReportRow> {
        self.rows.iter().find(|r| r.variant == variant)
    }
}

/// What [`Trainer::run_study`] produces.
#[derive(Debug, Clone)]
pub struct Study {
    pub report: Report,
    pub split: Split,
    pub fused: TrainedModel,
    /// `None` when no example has an image or no example has text.
    pub image_only: Option<TrainedModel>,
    pub text_only: Option<TrainedModel>,
}
