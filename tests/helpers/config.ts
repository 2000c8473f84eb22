// validateConfig's problems for a raw config: the list it throws (empty when the config is valid).
import * as assert from "assert";
import { ConfigError, RawConfig, SecretInputs, validateConfig } from "../../components/config";

export function problems(raw: RawConfig, secrets: SecretInputs): string[] {
    try {
        validateConfig(raw, secrets);
    } catch (e) {
        assert.ok(e instanceof ConfigError, String(e));
        return e.problems;
    }
    return [];
}
