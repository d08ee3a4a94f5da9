defmodule Bgapp.MixProject do
  use Mix.Project

  # A release for bluegreen's tests: standard library only (no Hex), :inets httpd.
  def project do
    [
      app: :bgapp,
      version: "0.1.0",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      deps: [],
      releases: [bgapp: [steps: [:assemble, :tar]]]
    ]
  end

  def application do
    [extra_applications: [:logger, :inets], mod: {Bgapp.Application, []}]
  end
end
