package attest

import "time"

// The JSON shapes below are BuildKit v0.34.2's
// (solver/llbsolver/provenance/types and in-toto-golang's slsa types),
// flattened: each struct lists its fields in the order encoding/json
// writes BuildKit's embedded structs, with BuildKit's omitempty. A field
// BuildKit always writes has no omitempty here either, so an empty
// buildkit_metadata is written as {} and an empty builder id as "".

type statement struct {
	Type          string    `json:"_type"`
	PredicateType string    `json:"predicateType"`
	Subject       []Subject `json:"subject"`
	Predicate     any       `json:"predicate"`
}

type predicate1 struct {
	BuildDefinition buildDefinition1 `json:"buildDefinition"`
	RunDetails      runDetails1      `json:"runDetails"`
}

type buildDefinition1 struct {
	BuildType            string              `json:"buildType"`
	ResolvedDependencies []resource          `json:"resolvedDependencies,omitempty"`
	ExternalParameters   externalParameters1 `json:"externalParameters"`
	InternalParameters   internalParameters1 `json:"internalParameters"`
}

type externalParameters1 struct {
	ConfigSource configSource `json:"configSource"`
	Request      parameters   `json:"request"`
}

type configSource struct {
	URI    string            `json:"uri,omitempty"`
	Digest map[string]string `json:"digest,omitempty"`
	Path   string            `json:"path,omitempty"`
}

// parameters is BuildKit's types.Parameters, shared by v1's request and
// v0.2's invocation.parameters.
type parameters struct {
	Frontend string            `json:"frontend,omitempty"`
	Args     map[string]string `json:"args,omitempty"`
	Secrets  []secret          `json:"secrets,omitempty"`
	SSH      []secret          `json:"ssh,omitempty"`
	Locals   []local           `json:"locals,omitempty"`
}

type secret struct {
	ID       string `json:"id"`
	Optional bool   `json:"optional,omitempty"`
}

type local struct {
	Name string `json:"name"`
}

// internalParameters1: BuildKit marshals this through a map, so its keys
// come out sorted; these are in that order.
type internalParameters1 struct {
	BuilderPlatform string `json:"builderPlatform"`
	TargetPlatform  string `json:"targetPlatform,omitempty"`
}

type resource struct {
	URI    string            `json:"uri,omitempty"`
	Digest map[string]string `json:"digest,omitempty"`
}

type runDetails1 struct {
	Builder  builder   `json:"builder"`
	Metadata metadata1 `json:"metadata"`
}

type builder struct {
	ID string `json:"id"`
}

type metadata1 struct {
	InvocationID string           `json:"invocationId,omitempty"`
	StartedOn    *time.Time       `json:"startedOn,omitempty"`
	FinishedOn   *time.Time       `json:"finishedOn,omitempty"`
	BuildKit     buildkitMetadata `json:"buildkit_metadata"`
	Hermetic     bool             `json:"buildkit_hermetic,omitempty"`
	Completeness completeness1    `json:"buildkit_completeness"`
	Reproducible bool             `json:"buildkit_reproducible,omitempty"`
}

type buildkitMetadata struct {
	VCS map[string]string `json:"vcs,omitempty"`
}

type completeness1 struct {
	Request              bool `json:"request"`
	ResolvedDependencies bool `json:"resolvedDependencies"`
}

type predicate02 struct {
	Builder    builder      `json:"builder"`
	BuildType  string       `json:"buildType"`
	Materials  []resource   `json:"materials,omitempty"`
	Invocation invocation02 `json:"invocation"`
	Metadata   metadata02   `json:"metadata"`
}

type invocation02 struct {
	ConfigSource configSource02 `json:"configSource"`
	Parameters   parameters     `json:"parameters"`
	Environment  environment02  `json:"environment"`
}

type configSource02 struct {
	URI        string            `json:"uri,omitempty"`
	Digest     map[string]string `json:"digest,omitempty"`
	EntryPoint string            `json:"entryPoint,omitempty"`
}

type environment02 struct {
	Platform string `json:"platform"`
}

type metadata02 struct {
	BuildInvocationID string           `json:"buildInvocationID,omitempty"`
	BuildStartedOn    *time.Time       `json:"buildStartedOn,omitempty"`
	BuildFinishedOn   *time.Time       `json:"buildFinishedOn,omitempty"`
	Completeness      completeness02   `json:"completeness"`
	Reproducible      bool             `json:"reproducible"`
	BuildKit          buildkitMetadata `json:"https://mobyproject.org/buildkit@v1#metadata"`
	Hermetic          bool             `json:"https://mobyproject.org/buildkit@v1#hermetic,omitempty"`
}

type completeness02 struct {
	Parameters  bool `json:"parameters"`
	Environment bool `json:"environment"`
	Materials   bool `json:"materials"`
}
