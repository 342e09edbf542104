package dev.llmrt;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** Versions, utilities, closing, aborting, load progress and a forced library panic. */
@Timeout(value = 180, unit = TimeUnit.SECONDS)
class LifecycleTest {
    private static Request longRequest() {
        // 400 greedy tokens: far longer than any of these tests waits.
        return Request.tokens(Fixture.prompt("len4").ids).temperature(0).ignoreEos(true)
                .maxTokens(400).build();
    }

    @Test
    void versionAndCapabilities() {
        assertEquals(Llmrt.ABI_VERSION, Llmrt.abiVersion());
        assertTrue(Llmrt.version().matches("\\d+\\.\\d+\\.\\d+.*"), Llmrt.version());
        String caps = Llmrt.capabilitiesJson();
        assertTrue(caps.startsWith("{") && caps.contains("\"LlamaForCausalLM\""), caps);
        assertTrue(caps.contains("\"safetensors\"") && caps.contains("\"features\""), caps);
    }

    @Test
    void metricsAndModelInfo() {
        try (Engine engine = Fixture.newEngine()) {
            Fixture.Prompt p = Fixture.prompt("len4");
            Result r = engine.generate(Request.tokens(p.ids).temperature(0).ignoreEos(true)
                    .maxTokens(8).build());
            assertEquals(8, r.tokenIds().length);
            String json = engine.metricsJson();
            assertTrue(json.startsWith("{") && json.contains("\"generation_tokens\":8"), json);
            assertTrue(engine.metricsPrometheus().contains("# TYPE llmrt_"));
            String info = engine.modelInfoJson();
            assertTrue(info.contains("\"vocab_size\":512") || info.contains("\"vocab_size\": 512"),
                    info);
            assertArrayEquals(p.ids, engine.tokenize(p.text, true));
            assertEquals(p.text, engine.detokenize(p.ids, true));
            assertEquals(0, engine.tokenize("", false).length);
        }
    }

    @Test
    void submitAfterCloseThrowsIllegalState() {
        Engine engine = Fixture.newEngine();
        Request req = Request.prompt("x").maxTokens(2).build();
        engine.generate(req);
        assertFalse(engine.isClosed());
        engine.close();
        assertTrue(engine.isClosed());
        engine.close(); // idempotent
        assertThrows(IllegalStateException.class, () -> engine.submit(req));
        assertThrows(IllegalStateException.class, () -> engine.submitAsync(req));
        assertThrows(IllegalStateException.class,
                () -> engine.submit(Request.tokens(3, 272).build()));
        assertThrows(IllegalStateException.class, () -> engine.tokenize("x", true));
        assertThrows(IllegalStateException.class, () -> engine.detokenize(new int[] {3}, true));
        assertThrows(IllegalStateException.class, engine::metricsJson);
        assertThrows(IllegalStateException.class, () -> engine.abort(1));
    }

    @Test
    void closeEndsRequestsInFlight() throws Exception {
        Engine engine = Fixture.newEngine();
        List<RequestStream> streams = new ArrayList<>();
        List<CompletableFuture<Result>> futures = new ArrayList<>();
        for (int i = 0; i < 3; i++) {
            streams.add(engine.submit(longRequest()));
            futures.add(engine.submitAsync(longRequest()));
        }
        assertTrue(streams.get(0).hasNext()); // generation has started
        engine.close();
        for (RequestStream s : streams) {
            Result r = GreedyReferenceTest.drain(s);
            assertEquals(FinishReason.ABORT, r.finishReason());
            assertTrue(r.tokenIds().length < 400);
            s.abort(); // a no-op now
            s.close();
        }
        for (CompletableFuture<Result> f : futures) {
            assertEquals(FinishReason.ABORT, f.get(60, TimeUnit.SECONDS).finishReason());
        }
    }

    @Test
    void abortEndsARequest() throws Exception {
        try (Engine engine = Fixture.newEngine()) {
            Fixture.Prompt p = Fixture.prompt("len4");
            RequestStream s = engine.submit(longRequest());
            Event first = s.next();
            s.abort();
            s.abort(); // twice is fine
            List<Integer> tokens = new ArrayList<>();
            for (int t : first.tokenIds()) {
                tokens.add(t);
            }
            Event last = first;
            while (s.hasNext()) {
                last = s.next();
                for (int t : last.tokenIds()) {
                    tokens.add(t);
                }
            }
            assertTrue(last.isFinal());
            assertEquals(FinishReason.ABORT, last.finishReason());
            assertTrue(tokens.size() < 400, "aborted early: " + tokens.size());
            // What was generated is still the greedy continuation.
            int n = Math.min(tokens.size(), p.greedy.length);
            assertArrayEquals(Arrays.copyOf(p.greedy, n),
                    tokens.subList(0, n).stream().mapToInt(Integer::intValue).toArray());

            // Engine.abort by id, and closing a stream (try-with-resources) aborts too.
            RequestStream s2 = engine.submit(longRequest());
            engine.abort(s2.requestId());
            assertEquals(FinishReason.ABORT, s2.collect().finishReason());
            RequestStream s3;
            try (RequestStream s3r = engine.submit(longRequest())) {
                s3 = s3r;
                s3.next();
            }
            assertEquals(FinishReason.ABORT, s3.collect().finishReason());

            // Cancelling the future aborts the request; the engine serves on.
            CompletableFuture<Result> f = engine.submitAsync(longRequest());
            assertTrue(f.cancel(true));
            assertTrue(f.isCancelled());
            assertThrows(java.util.concurrent.CancellationException.class, f::join);
            Result after = engine.generate(Request.tokens(p.ids).temperature(0).ignoreEos(true)
                    .maxTokens(p.greedy.length).build());
            assertArrayEquals(p.greedy, after.tokenIds());
            engine.abort(123456789L); // an unknown id is not an error
        }
    }

    @Test
    void pollWithTimeoutAndInterrupt() {
        try (Engine engine = Fixture.newEngine()) {
            RequestStream s = engine.submit(longRequest());
            Event e = s.poll(60, TimeUnit.SECONDS);
            assertTrue(e != null && e.requestId() == s.requestId());
            Thread.currentThread().interrupt();
            try {
                // Either an event is already queued, or the wait is interrupted.
                while (true) {
                    s.next();
                }
            } catch (java.util.concurrent.CancellationException expected) {
                assertTrue(Thread.interrupted()); // the flag stays set (and is cleared here)
            }
            s.close();
        }
    }

    @Test
    void progressListenerAndCancel() {
        List<Float> seen = new ArrayList<>();
        try (Engine engine = Engine.builder(Fixture.MODEL.toString()).numThreads(1)
                .progressListener((progress, stage) -> {
                    assertFalse(stage.isEmpty());
                    seen.add(progress);
                    return true;
                }).build()) {
            assertFalse(engine.isClosed());
            assertTrue(seen.size() >= 2, seen.toString());
            for (int i = 1; i < seen.size(); i++) {
                assertTrue(seen.get(i) >= seen.get(i - 1), seen.toString());
            }
            assertEquals(1.0f, seen.get(seen.size() - 1));
        }
        String config = Fixture.config();
        MisuseTest.expect(Status.CANCELLED, "cancel",
                () -> Engine.create(config, (progress, stage) -> false));
        // A listener that throws cancels the load, and its exception comes back as is.
        IllegalArgumentException thrown = new IllegalArgumentException("listener failed");
        IllegalArgumentException got = assertThrows(IllegalArgumentException.class,
                () -> Engine.create(config, (progress, stage) -> {
                    throw thrown;
                }));
        assertSame(thrown, got);
    }

    @Test
    void aPanicInTheLibraryIsAnErrorAndTheProcessLives() throws Exception {
        assumeTrue("1".equals(System.getenv("LLMRT_TEST_HOOKS")),
                "needs LLMRT_TEST_HOOKS=1 (set by the pom for the test JVM)");
        Engine engine = Fixture.newEngine();
        RequestStream running = engine.submit(longRequest());
        CompletableFuture<Result> future = engine.submitAsync(longRequest());
        System.err.println("(a panic message from the library's test hook follows)");
        MisuseTest.expect(Status.INTERNAL, "test hook", () -> engine.submit(
                Request.ofJson("{\"prompt\": \"x\", \"llmrt_test_panic\": true}")));
        // The engine refuses further work with the same code.
        MisuseTest.expect(Status.INTERNAL, null,
                () -> engine.submit(Request.prompt("x").build()));
        MisuseTest.expect(Status.INTERNAL, null,
                () -> engine.submit(Request.tokens(3, 272).build()));
        // Requests in flight end with the error, not a hang.
        LlmrtException e = assertThrows(LlmrtException.class, () -> {
            while (running.hasNext()) {
                running.next();
            }
        });
        assertEquals(Status.INTERNAL, e.status());
        ExecutionException ee = assertThrows(ExecutionException.class,
                () -> future.get(60, TimeUnit.SECONDS));
        assertEquals(Status.INTERNAL, ((LlmrtException) ee.getCause()).status());
        engine.close();
        assertThrows(IllegalStateException.class, () -> engine.submit(Request.prompt("x").build()));
        // The process lives, and a new engine serves.
        try (Engine fresh = Fixture.newEngine()) {
            Fixture.Prompt p = Fixture.prompt("len13");
            assertArrayEquals(p.greedy, fresh.generate(Request.tokens(p.ids).temperature(0)
                    .ignoreEos(true).maxTokens(p.greedy.length).build()).tokenIds());
        }
    }

    @Test
    void closeFromTheEnginesOwnThread() throws Exception {
        Engine engine = Fixture.newEngine();
        AtomicReference<Thread> ranOn = new AtomicReference<>();
        CompletableFuture<Void> closed = engine.submitAsync(Request.prompt("x").maxTokens(2)
                .build()).thenAccept(r -> {
                    ranOn.set(Thread.currentThread());
                    engine.close(); // on the poller thread: must not deadlock
                });
        closed.get(60, TimeUnit.SECONDS);
        assertTrue(engine.isClosed());
        assertTrue(ranOn.get() != null); // the poller thread, unless the result came first
        engine.close(); // waits for the poller, which frees the engine
        assertThrows(IllegalStateException.class, () -> engine.submit(Request.prompt("x").build()));
    }
}
