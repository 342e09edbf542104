//! Freeing an engine ends every thread it started (a host may unload the library next).
//! Alone in its own test binary so that no other test's threads are counted.

mod common;
use common::*;
use llmrt::{Engine, EngineConfig, SamplingParams};
use std::time::Duration;

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn dropping_the_engine_joins_all_its_threads() {
    let before = thread_count();
    for _ in 0..3 {
        let engine = Engine::new(EngineConfig {
            model: fixtures().join("models").join("qwen2"),
            num_threads: 2,
            ..Default::default()
        })
        .unwrap();
        let id = engine
            .add_prompt("hello", SamplingParams::greedy(4))
            .unwrap();
        while !engine
            .poll(8, Duration::from_millis(100))
            .iter()
            .any(|e| e.request_id == id && e.is_final())
        {}
        assert!(thread_count() > before);
        drop(engine);
        assert_eq!(
            thread_count(),
            before,
            "threads left running after the engine was dropped"
        );
    }
}
