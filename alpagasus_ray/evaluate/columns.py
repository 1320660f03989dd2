"""Names of the columns the evaluation adds to a row while it is generated, shared by the
prompt stage, the HF and vLLM generation stages and the stages that finish the rows; none of
them reaches the written output."""

PROMPT_IDS = "_ids"  # the prompt's token ids; null when the row has no prompt
PROMPT_TOKENS = "_n_prompt"  # how many
GEN_TEXT = "_gen_text"  # the generated text
GEN_TOKENS = "_gen_tokens"  # how many tokens were generated
GEN_ERROR = "_gen_error"  # why this row has no generated text
GEN_REQUEST = "_gen_request"  # an API engine's request (JSON), only with engine openai
INTERNAL = (PROMPT_IDS, GEN_TEXT, GEN_TOKENS, PROMPT_TOKENS, GEN_ERROR)
