module llmrt.dev/llmrt

go 1.22
