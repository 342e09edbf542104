package dev.llmrt;

/**
 * One of the most likely tokens at a position ({@code llmrt_event_top_logprob},
 * {@code llmrt_event_prompt_top_logprob}).
 *
 * @param tokenId the token
 * @param logprob its log-probability, of the distribution the request's
 *     {@code logprobs_mode} names (by default the model's raw one)
 * @param rank 1 for the most likely token
 */
public record TopLogprob(int tokenId, float logprob, int rank) {
}
