// The shape grafana/dashboards/roomgate.json must have, built from Grafana's published
// schema (@grafana/schema, pinned in package-lock.json). tests/monitoring.rs writes the
// dashboard as an object literal of type `CheckedDashboard` and runs tsc on it, so
// unknown keys (excess-property checks), wrong types and values outside the schema's
// unions and enums are errors.
import type { DataQuery } from '@grafana/schema';
import type * as raw from '@grafana/schema/dist/esm/raw/dashboard/x/Dashboard_types.gen';
import type * as barchart from '@grafana/schema/dist/esm/raw/composable/barchart/panelcfg/x/BarChartPanelCfg_types.gen';
import type * as bargauge from '@grafana/schema/dist/esm/raw/composable/bargauge/panelcfg/x/BarGaugePanelCfg_types.gen';
import type * as gauge from '@grafana/schema/dist/esm/raw/composable/gauge/panelcfg/x/GaugePanelCfg_types.gen';
import type * as heatmap from '@grafana/schema/dist/esm/raw/composable/heatmap/panelcfg/x/HeatmapPanelCfg_types.gen';
import type * as histogram from '@grafana/schema/dist/esm/raw/composable/histogram/panelcfg/x/HistogramPanelCfg_types.gen';
import type * as piechart from '@grafana/schema/dist/esm/raw/composable/piechart/panelcfg/x/PieChartPanelCfg_types.gen';
import type * as stat from '@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen';
import type * as statetimeline from '@grafana/schema/dist/esm/raw/composable/statetimeline/panelcfg/x/StateTimelinePanelCfg_types.gen';
import type * as statushistory from '@grafana/schema/dist/esm/raw/composable/statushistory/panelcfg/x/StatusHistoryPanelCfg_types.gen';
import type * as table from '@grafana/schema/dist/esm/raw/composable/table/panelcfg/x/TablePanelCfg_types.gen';
import type * as text from '@grafana/schema/dist/esm/raw/composable/text/panelcfg/x/TextPanelCfg_types.gen';
import type * as timeseries from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';

/**
 * A schema type as it appears in JSON: TypeScript string enums are nominal, so a JSON
 * string could never match one; they become the union of their values. Numeric enums
 * stay (a number literal must be one of their values).
 */
export type Json<T> = T extends string
  ? `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends ReadonlyArray<infer U>
      ? Array<Json<U>>
      : T extends object
        ? { [K in keyof T]: Json<T[K]> }
        : T;

/** Panel plugins fill in defaults, so a saved panel may leave any option out. */
export type DeepPartial<T> = T extends ReadonlyArray<infer U>
  ? Array<DeepPartial<U>>
  : T extends object
    ? { [K in keyof T]?: DeepPartial<T[K]> }
    : T;

/**
 * A Prometheus target: the published DataQuery plus the Prometheus data source's query
 * fields (its dataquery schema moved into the plugin and is no longer in @grafana/schema).
 */
export interface PrometheusQuery extends DataQuery {
  expr: string;
  instant?: boolean;
  range?: boolean;
  exemplar?: boolean;
  editorMode?: 'code' | 'builder';
  format?: 'time_series' | 'table' | 'heatmap';
  legendFormat?: string;
  intervalFactor?: number;
  interval?: string;
}

type FieldConfigSource<Custom> = Omit<Json<raw.FieldConfigSource>, 'defaults'> & {
  defaults: Omit<Json<raw.FieldConfig>, 'custom'> & { custom?: DeepPartial<Json<Custom>> };
};

/** A panel of plugin `Type`: the dashboard schema's Panel with that plugin's options. */
type PanelOf<Type extends string, Options, Custom = Record<string, unknown>> = Omit<
  Json<raw.Panel>,
  'type' | 'options' | 'fieldConfig' | 'targets'
> & {
  type: Type;
  options?: DeepPartial<Json<Options>>;
  fieldConfig?: FieldConfigSource<Custom>;
  targets?: Array<Json<PrometheusQuery>>;
};

/** The panel plugins whose schema Grafana publishes; another type is an error. */
export type KnownPanel =
  | PanelOf<'barchart', barchart.Options, barchart.FieldConfig>
  | PanelOf<'bargauge', bargauge.Options>
  | PanelOf<'gauge', gauge.Options>
  | PanelOf<'heatmap', heatmap.Options, heatmap.FieldConfig>
  | PanelOf<'histogram', histogram.Options, histogram.FieldConfig>
  | PanelOf<'piechart', piechart.Options, piechart.FieldConfig>
  | PanelOf<'stat', stat.Options>
  | PanelOf<'state-timeline', statetimeline.Options, statetimeline.FieldConfig>
  | PanelOf<'status-history', statushistory.Options, statushistory.FieldConfig>
  | PanelOf<'table', table.Options, table.FieldConfig>
  | PanelOf<'text', text.Options>
  | PanelOf<'timeseries', timeseries.Options, timeseries.FieldConfig>;

export type RowPanel = Omit<Json<raw.RowPanel>, 'panels'> & { panels: KnownPanel[] };

/** The classic dashboard JSON model (schemaVersion 3x), as Grafana's schema defines it. */
export type CheckedDashboard = Omit<Json<raw.Dashboard>, 'panels'> & {
  panels?: Array<KnownPanel | RowPanel>;
};
