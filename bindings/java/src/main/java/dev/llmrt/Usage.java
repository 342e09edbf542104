package dev.llmrt;

/**
 * The token counts of a finished request.
 *
 * @param promptTokens the prompt's length in tokens
 * @param completionTokens the number of tokens generated
 * @param cachedPromptTokens prompt tokens served from the prefix cache
 */
public record Usage(long promptTokens, long completionTokens, long cachedPromptTokens) {
}
