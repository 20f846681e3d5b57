//! Training jobs and model versions.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use crate::api::{ErrorBody, JobAccepted, JobStatus, ModelInfo, ModelList, TrainRequest};
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::state::AppState;

/// Start training the fused model in the background; poll the returned job. The body may be
/// empty (engine defaults).
#[utoipa::path(
    post, path = "/v1/train", tag = "models",
    request_body = TrainRequest,
    responses(
        (status = 202, description = "Started; `Location` names the job", body = JobAccepted),
        (status = 400, description = "Bad body", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 403, description = "Writes are disabled", body = ErrorBody),
        (status = 409, description = "A training job is already running", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn train(
    state: web::Data<AppState>,
    body: JsonBody<TrainRequest>,
) -> Result<HttpResponse, ApiError> {
    let request = body.0;
    validate_train(&request)?;
    let job_id = state
        .blocking("starting training", move |backend| {
            backend.start_train(request)
        })
        .await?;
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/v1/jobs/{job_id}")))
        .json(JobAccepted { job_id }))
}

/// Refuses a setting that cannot train before a job starts, naming the request's field.
fn validate_train(request: &TrainRequest) -> Result<(), ApiError> {
    if request.epochs == Some(0) {
        return Err(ApiError::invalid_argument("epochs", "must be at least 1"));
    }
    // The engine's batches hold at least two items (batch statistics need two).
    if let Some(size) = request.batch_size {
        if size < 2 {
            return Err(ApiError::invalid_argument(
                "batch_size",
                "must be at least 2",
            ));
        }
    }
    if let Some(rate) = request.learning_rate {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(ApiError::invalid_argument(
                "learning_rate",
                "must be a positive number",
            ));
        }
    }
    // The engine holds out twice this fraction (validation plus test), below one half.
    if let Some(fraction) = request.validation_fraction {
        if !(0.0..MAX_VALIDATION_FRACTION).contains(&fraction) {
            return Err(ApiError::invalid_argument(
                "validation_fraction",
                format!("must be at least 0 and below {MAX_VALIDATION_FRACTION}"),
            ));
        }
    }
    if let Some(blocks) = request.finetune_blocks {
        if request.finetune_image != Some(true) {
            return Err(ApiError::invalid_argument(
                "finetune_blocks",
                "applies only with finetune_image: true",
            ));
        }
        if blocks == 0 {
            return Err(ApiError::invalid_argument(
                "finetune_blocks",
                "must be at least 1",
            ));
        }
    }
    Ok(())
}

/// Largest `validation_fraction` accepted (exclusive).
const MAX_VALIDATION_FRACTION: f32 = 0.25;

#[utoipa::path(
    get, path = "/v1/jobs/{id}", tag = "models",
    params(("id" = String, Path, description = "Job id from POST /v1/train")),
    responses(
        (status = 200, body = JobStatus),
        (status = 404, description = "No such job", body = ErrorBody),
    )
)]
pub(crate) async fn job(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let status = state
        .blocking("reading a job", move |backend| backend.job(&id))
        .await?;
    Ok(HttpResponse::Ok().json(status))
}

#[utoipa::path(
    get, path = "/v1/models", tag = "models",
    responses((status = 200, body = ModelList))
)]
pub(crate) async fn models(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let models = state
        .blocking("listing models", |backend| backend.models())
        .await?;
    Ok(HttpResponse::Ok().json(ModelList { models }))
}

#[utoipa::path(
    post, path = "/v1/models/{version}/activate", tag = "models",
    params(("version" = String, Path, description = "Model version")),
    responses(
        (status = 200, description = "Now active", body = ModelInfo),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 403, description = "Writes are disabled", body = ErrorBody),
        (status = 404, description = "No such model version", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn activate_model(
    state: web::Data<AppState>,
    version: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let version = version.into_inner();
    let model = state
        .blocking("activating a model", move |backend| {
            backend.activate_model(&version)
        })
        .await?;
    Ok(HttpResponse::Ok().json(model))
}
