//! Scheduling: requests, the token-budget scheduler and the plain data it passes on.

pub mod beam;
pub mod output;
pub mod request;
pub mod scheduler;

pub use output::{EngineCoreOutput, ModelRunnerOutput, ScheduledRequest, SchedulerOutput};
pub use request::{FinishReason, Request, RequestId, RequestStatus};
pub use scheduler::{SchedulePolicy, Scheduler, SchedulerConfig, SchedulerStats};
