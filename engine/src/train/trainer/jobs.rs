//! The study's models as jobs on threads, longest first, and the pieces a fused fit leaves.

use super::*;

/// How one call of the training loop went.
pub(super) struct FitOutcome {
    pub(super) epochs_run: usize,
    pub(super) best_epoch: usize,
    pub(super) val: SplitMetrics,
    pub(super) seconds: f64,
    /// The image projection widths tried, when more than one was.
    pub(super) width_trials: Vec<WidthTrial>,
}

/// A fused-family model being trained: its configuration, seeded weights and training rows.
pub(super) struct FusedRun {
    pub(super) variant: String,
    pub(super) cfg: FusionConfig,
    pub(super) varmap: VarMap,
    pub(super) model: FusedModel,
    pub(super) train_rows: Vec<usize>,
    /// Seconds spent setting it up.
    pub(super) setup_seconds: f64,
}

/// Waits for a training thread, passing on its panic as one.
pub(super) fn join<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// One independent piece of the study.
pub(super) type Job<'a> = Box<dyn FnOnce() -> Result<Done> + Send + 'a>;

/// What a study job produced.
pub(super) enum Done {
    /// The fused model's classifier.
    Fit(FitOutcome),
    /// The fused model's joint heads, aligned in this many seconds.
    Aligned(f64),
    /// The fused model's classifier, then its joint heads aligned in this many seconds.
    FitThenAligned(FitOutcome, f64),
    /// The classifier of candidate `i` (another image projection width, see
    /// [`Trainer::prepare_candidates`]).
    Candidate(usize, FitOutcome),
    /// An image-only or text-only model.
    Model(Box<TrainedModel>),
    /// The logistic-regression baseline.
    Row(ReportRow),
}

/// The fused model's results gathered from its jobs (see [`Trainer::fused_jobs`]).
#[derive(Default)]
pub(super) struct FusedParts {
    pub(super) fit: Option<FitOutcome>,
    pub(super) align_seconds: f64,
    /// Classifiers of the other candidates, by candidate index.
    pub(super) candidates: Vec<(usize, FitOutcome)>,
}

impl FusedParts {
    /// Keeps `done` if it belongs to the fused model; hands anything else back.
    pub(super) fn take(&mut self, done: Done) -> Option<Done> {
        match done {
            Done::Fit(fit) => self.fit = Some(fit),
            Done::Aligned(seconds) => self.align_seconds = seconds,
            Done::FitThenAligned(fit, seconds) => {
                self.fit = Some(fit);
                self.align_seconds = seconds;
            }
            Done::Candidate(i, fit) => self.candidates.push((i, fit)),
            other => return Some(other),
        }
        None
    }

    /// Every candidate's classifier outcome in candidate order (the first is the one its
    /// jobs also aligned), and the alignment's seconds.
    pub(super) fn finish(mut self, candidates: usize) -> Result<(Vec<FitOutcome>, f64)> {
        let fit = self.fit.ok_or_else(|| {
            Error::InvalidArgument("the fused model's classifier job returned nothing".into())
        })?;
        self.candidates.sort_by_key(|(i, _)| *i);
        let mut fits = vec![fit];
        fits.extend(self.candidates.into_iter().map(|(_, f)| f));
        if fits.len() != candidates {
            return Err(Error::InvalidArgument(format!(
                "{} of {candidates} candidate classifiers returned",
                fits.len()
            )));
        }
        Ok((fits, self.align_seconds))
    }
}

/// Runs `jobs` on up to rayon's thread count of threads, each thread taking the next job in
/// list order when it is free; returns their results in list order, or the first job's error
/// (jobs not yet started then do not start). Every job is seeded on its own, so the results do
/// not depend on which thread ran what, or when.
pub(super) fn run_jobs(jobs: Vec<Job<'_>>) -> Result<Vec<Done>> {
    let count = jobs.len();
    let queue = Mutex::new(jobs.into_iter().enumerate());
    let results: Mutex<Vec<Option<Result<Done>>>> = Mutex::new((0..count).map(|_| None).collect());
    let failed = AtomicBool::new(false);
    let work = || loop {
        if failed.load(Ordering::Relaxed) {
            return;
        }
        let next = match queue.lock() {
            Ok(mut q) => q.next(),
            Err(_) => None,
        };
        let Some((i, job)) = next else { return };
        let result = job();
        if result.is_err() {
            failed.store(true, Ordering::Relaxed);
        }
        if let Ok(mut results) = results.lock() {
            results[i] = Some(result);
        }
    };
    let threads = rayon::current_num_threads().clamp(1, count.max(1));
    std::thread::scope(|s| {
        let helpers: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
        work();
        for helper in helpers {
            join(helper);
        }
    });
    let results = results.into_inner().map_err(|_| {
        Error::InvalidArgument("a training thread panicked while storing its result".into())
    })?;
    // The first failure, not the jobs it kept from starting.
    let mut out = Vec::with_capacity(count);
    let mut skipped = false;
    for result in results {
        match result {
            Some(r) => out.push(r?),
            None => skipped = true,
        }
    }
    if skipped {
        return Err(Error::InvalidArgument(
            "a study job did not run, yet none failed".into(),
        ));
    }
    Ok(out)
}
