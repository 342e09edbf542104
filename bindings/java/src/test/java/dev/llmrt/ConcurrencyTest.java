package dev.llmrt;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * Many requests from several threads at once, through streams and futures, with aborts:
 * every request gets exactly one final event, and its own tokens.
 */
@Timeout(value = 300, unit = TimeUnit.SECONDS)
class ConcurrencyTest {
    private static final int REQUESTS = 200;
    private static final int THREADS = 4;

    @Test
    void concurrentRequestsEachGetExactlyOneFinalEvent() throws Exception {
        Fixture.Prompt len4 = Fixture.prompt("len4");
        Fixture.Prompt len13 = Fixture.prompt("len13");
        ConcurrentLinkedQueue<String> failures = new ConcurrentLinkedQueue<>();
        AtomicInteger finished = new AtomicInteger();
        AtomicInteger aborted = new AtomicInteger();
        try (Engine engine = Fixture.newEngine()) {
            CountDownLatch go = new CountDownLatch(1);
            List<Thread> threads = new ArrayList<>();
            for (int t = 0; t < THREADS; t++) {
                final int thread = t;
                threads.add(new Thread(() -> {
                    Random rnd = new Random(1234 + thread);
                    List<Runnable> checks = new ArrayList<>();
                    try {
                        go.await();
                        for (int k = thread; k < REQUESTS; k += THREADS) {
                            final int index = k;
                            Fixture.Prompt p = k % 2 == 0 ? len4 : len13;
                            int max = 1 + rnd.nextInt(8);
                            boolean abort = k % 7 == 3;
                            Request.Builder b = Request.tokens(p.ids).temperature(0)
                                    .ignoreEos(true).maxTokens(abort ? 300 : max);
                            if (k % 3 == 0) {
                                b.forceJson(true).priority(k % 5);
                            }
                            Request req = b.build();
                            int want = abort ? -1 : max;
                            if (k % 4 < 2) {
                                RequestStream s = engine.submit(req);
                                if (abort) {
                                    s.abort();
                                }
                                checks.add(() -> checkStream(index, s, p, want, failures));
                            } else {
                                CompletableFuture<Result> f = engine.submitAsync(req);
                                if (abort) {
                                    f.cancel(true); // aborts the request
                                }
                                checks.add(() -> checkFuture(index, f, p, want, failures));
                            }
                            if (abort) {
                                aborted.incrementAndGet();
                            }
                        }
                        for (Runnable c : checks) {
                            c.run();
                            finished.incrementAndGet();
                        }
                    } catch (Throwable e) {
                        failures.add("thread " + thread + ": " + e);
                    }
                }, "submitter-" + t));
            }
            threads.forEach(Thread::start);
            go.countDown();
            for (Thread t : threads) {
                t.join();
            }
        }
        assertTrue(failures.isEmpty(), String.join("\n", failures));
        assertEquals(REQUESTS, finished.get());
        assertTrue(aborted.get() > 0);
    }

    private static void checkStream(int index, RequestStream s, Fixture.Prompt p, int want,
            ConcurrentLinkedQueue<String> failures) {
        List<Integer> tokens = new ArrayList<>();
        int finals = 0;
        Event last = null;
        while (s.hasNext()) {
            Event e = s.next();
            if (e.requestId() != s.requestId()) {
                failures.add(index + ": event of request " + e.requestId());
            }
            if (e.isFinal()) {
                finals++;
            }
            for (int t : e.tokenIds()) {
                tokens.add(t);
            }
            last = e;
        }
        if (finals != 1 || last == null || !last.isFinal()) {
            failures.add(index + ": " + finals + " final events");
            return;
        }
        check(index, tokens.stream().mapToInt(Integer::intValue).toArray(), last.finishReason(),
                p, want, failures);
    }

    private static void checkFuture(int index, CompletableFuture<Result> f, Fixture.Prompt p,
            int want, ConcurrentLinkedQueue<String> failures) {
        if (want < 0) {
            if (!f.isCancelled()) {
                failures.add(index + ": not cancelled");
            }
            return;
        }
        try {
            Result r = f.get(240, TimeUnit.SECONDS);
            check(index, r.tokenIds(), r.finishReason(), p, want, failures);
        } catch (Exception e) {
            failures.add(index + ": " + e);
        }
    }

    /** Greedy with ignore_eos: exactly `want` tokens of the reference, or an aborted prefix. */
    private static void check(int index, int[] tokens, FinishReason reason, Fixture.Prompt p,
            int want, ConcurrentLinkedQueue<String> failures) {
        if (want > 0) {
            if (reason != FinishReason.LENGTH) {
                failures.add(index + ": finish " + reason);
            }
            if (!Arrays.equals(Arrays.copyOf(p.greedy, want), tokens)) {
                failures.add(index + ": tokens " + Arrays.toString(tokens));
            }
        } else {
            if (reason != FinishReason.ABORT && reason != FinishReason.LENGTH) {
                failures.add(index + ": finish " + reason + " after an abort");
            }
            int n = Math.min(tokens.length, p.greedy.length);
            if (tokens.length >= 300 && reason == FinishReason.ABORT
                    || !Arrays.equals(Arrays.copyOf(p.greedy, n), Arrays.copyOf(tokens, n))) {
                failures.add(index + ": aborted tokens " + Arrays.toString(tokens));
            }
        }
    }

    @Test
    void manyFuturesFromOneThread() throws Exception {
        Fixture.Prompt p = Fixture.prompt("len13");
        try (Engine engine = Fixture.newEngine()) {
            List<CompletableFuture<Result>> all = new ArrayList<>();
            for (int i = 0; i < 50; i++) {
                all.add(engine.submitAsync(Request.tokens(p.ids).temperature(0).ignoreEos(true)
                        .maxTokens(4).build()));
            }
            CompletableFuture.allOf(all.toArray(new CompletableFuture<?>[0]))
                    .get(240, TimeUnit.SECONDS);
            for (CompletableFuture<Result> f : all) {
                assertArrayEquals(Arrays.copyOf(p.greedy, 4), f.join().tokenIds());
            }
        }
    }
}
