// A stand-in for '@anthropic-ai/sdk' for the README's Node snippets
// (t/016_readme.pl): no test may call a vendor.  Same shapes as the SDK's
// Messages API.
export default class Anthropic {
  constructor () {
    this.messages = {
      async create ({ model, messages }) {
        return {
          model,
          content: [{ type: 'text', text: 'echo: ' + messages[0].content }],
          usage: { input_tokens: 812, output_tokens: 1045, cache_read_input_tokens: 0, cache_creation_input_tokens: 0 }
        }
      }
    }
  }
}
