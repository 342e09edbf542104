package dev.llmrt;

import java.util.List;

/**
 * The log-probability of one token, generated ({@link Event#logprobs()}) or of the prompt
 * ({@link Event#promptLogprobs()}), with the most likely alternatives at its position.
 * Immutable.
 *
 * @param tokenId the token
 * @param logprob its log-probability, of the distribution the request's
 *     {@code logprobs_mode} names (by default the model's raw one)
 * @param rank its rank in that distribution, 1 for the most likely token
 * @param top the most likely tokens at the position, best first: as many as the request's
 *     {@code logprobs} (or {@code prompt_logprobs}) asked for; empty for 0
 */
public record TokenLogprob(int tokenId, float logprob, int rank, List<TopLogprob> top) {
    public TokenLogprob {
        top = List.copyOf(top);
    }
}
